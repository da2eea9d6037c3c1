// Package flatten owns turning an ordered stack of OCI layers into the single
// tar stream of the final root filesystem, without unpacking anything onto
// the host.
//
// It works in two passes. The plan pass replays every layer's entry index
// (package layer) against an in-memory tree, bottom layer first, applying OCI
// whiteouts and opaque directories, replacements, implicit parent
// directories, symlinked parent directories and hardlinks, with inode
// identity, so it knows exactly which tar entry of which layer supplies each
// surviving file and under which names. The stream pass then reads the
// layers bottom-up once more and emits only those entries, renamed to their
// final paths, each hardlinked inode's content once under its first name and
// then the other names as tar hardlinks. Layers that contribute nothing are
// not read at all, and a layer is read only up to its last useful entry.
//
// Semantics follow the OCI image spec's changeset rules: whiteouts and
// opaque markers of a layer only hide content of lower layers (they are
// applied before the layer's other entries); a later entry for the same path
// replaces an earlier one, a non-directory replaces a directory together
// with its subtree, a directory entry over an existing directory only
// updates its metadata. A hardlink refers to whatever its target names at
// that point of the replay, which may be a file from a lower layer; if the
// target is later deleted or replaced, the link keeps the old content (as it
// would on overlayfs). A hardlink's own header metadata is ignored in favour
// of its target's, as every tar extractor does.
package flatten

import (
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/layer"
)

// Layer is one layer of the stack, bottom first.
type Layer struct {
	Digest v1.Hash
	Index  *layer.Index
	// Open returns the layer blob (compressed as stored). It is called at
	// most once, by the stream pass.
	Open func() (io.ReadCloser, error)
}

// maxSymlinkHops bounds symlink resolution in parent paths, like the
// kernel's ELOOP limit.
const maxSymlinkHops = 40

type srcRef struct{ layer, ord int }

var implicit = srcRef{-1, -1}

type inode struct {
	src  srcRef
	typ  layer.Type
	link string // symlink target
	size int64
}

type node struct {
	children map[string]*node // non-nil for directories
	src      srcRef           // directory metadata source
	ino      *inode           // non-directories
}

func (n *node) isDir() bool { return n.children != nil }

func newDir(src srcRef) *node { return &node{children: map[string]*node{}, src: src} }

// action is what the stream pass does at one entry: emit a directory's
// metadata, or a file under paths[0] plus hardlinks for paths[1:].
type action struct {
	dir   bool
	paths []string
}

// Plan is the result of the plan pass.
type Plan struct {
	layers       []Layer
	implicitDirs []string
	actions      []map[int]*action // per layer: entry ordinal -> action
	last         []int             // per layer: last ordinal with an action, -1 if none

	// Stats of the final tree.
	Dirs, Files, Hardlinks int
	// ContentBytes is the total size of regular file data.
	ContentBytes int64
}

// LayersRead is how many layers the stream pass will open.
func (p *Plan) LayersRead() int {
	n := 0
	for _, l := range p.last {
		if l >= 0 {
			n++
		}
	}
	return n
}

type sim struct {
	root   *node
	layers []Layer
}

// NewPlan replays the layers' indexes and computes the final tree.
func NewPlan(layers []Layer) (*Plan, error) {
	s := &sim{root: newDir(implicit), layers: layers}
	for li, l := range layers {
		if l.Index == nil {
			return nil, fmt.Errorf("layer %s has no index", l.Digest)
		}
		if err := s.apply(li); err != nil {
			return nil, err
		}
	}
	return s.plan(), nil
}

func (s *sim) bad(li int, entry string, err error) error {
	return &layer.BadLayerError{Layer: s.layers[li].Digest, Entry: entry, Err: err}
}

func (s *sim) apply(li int) error {
	entries := s.layers[li].Index.Entries
	// Whiteouts and opaque markers only affect lower layers, so apply them
	// before this layer adds anything.
	for _, e := range entries {
		switch e.Type {
		case layer.Whiteout:
			dir, base, err := s.parentOf(e.Name, false)
			if err != nil {
				return s.bad(li, e.Name, err)
			}
			if dir != nil {
				delete(dir.children, base)
			}
		case layer.Opaque:
			n, err := s.lookup(e.Name)
			if err != nil {
				return s.bad(li, e.Name, err)
			}
			if n != nil && n.isDir() {
				n.children = map[string]*node{}
			}
		}
	}
	for ord, e := range entries {
		src := srcRef{li, ord}
		switch e.Type {
		case layer.Skip, layer.Whiteout, layer.Opaque:
		case layer.Dir:
			if e.Name == "" {
				s.root.src = src
				continue
			}
			dir, base, err := s.parentOf(e.Name, true)
			if err != nil {
				return s.bad(li, e.Name, err)
			}
			if old := dir.children[base]; old != nil && old.isDir() {
				old.src = src
			} else {
				dir.children[base] = newDir(src)
			}
		case layer.Hardlink:
			target, err := s.lookup(e.Link)
			if err != nil {
				return s.bad(li, e.Name, fmt.Errorf("hardlink target %q: %v", e.Link, err))
			}
			if target == nil {
				return s.bad(li, e.Name, fmt.Errorf("hardlink to missing target %q (not in this layer before the link, nor in a lower layer)", e.Link))
			}
			if target.isDir() {
				return s.bad(li, e.Name, fmt.Errorf("hardlink to directory %q", e.Link))
			}
			dir, base, err := s.parentOf(e.Name, true)
			if err != nil {
				return s.bad(li, e.Name, err)
			}
			dir.children[base] = &node{ino: target.ino}
		default: // Reg, Symlink, Char, Block, Fifo
			dir, base, err := s.parentOf(e.Name, true)
			if err != nil {
				return s.bad(li, e.Name, err)
			}
			dir.children[base] = &node{ino: &inode{src: src, typ: e.Type, link: e.Link, size: e.Size}}
		}
	}
	return nil
}

var errNotDir = errors.New("a parent path is not a directory")

// parentOf finds the directory that holds name's last component, following
// symlinks in the parent components (confined to the image root, the way
// containerd resolves them) and, if create is set, creating missing parents
// as implicit directories. With create unset a missing parent yields nil.
func (s *sim) parentOf(name string, create bool) (*node, string, error) {
	dirPath, base := path.Split(name)
	dir, err := s.walk(strings.Split(strings.TrimSuffix(dirPath, "/"), "/"), create)
	if err != nil || dir == nil {
		return nil, "", err
	}
	return dir, base, nil
}

// lookup returns the node at name (the last component is not followed), or
// nil if it does not exist.
func (s *sim) lookup(name string) (*node, error) {
	if name == "" {
		return s.root, nil
	}
	dir, base, err := s.parentOf(name, false)
	if err != nil || dir == nil {
		return nil, err
	}
	return dir.children[base], nil
}

// walk descends through comps from the root and returns the directory node
// reached.
func (s *sim) walk(comps []string, create bool) (*node, error) {
	stack := []*node{s.root}
	hops := 0
	for i := 0; i < len(comps); i++ {
		c := comps[i]
		cur := stack[len(stack)-1]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		child := cur.children[c]
		switch {
		case child == nil:
			if !create {
				return nil, nil
			}
			child = newDir(implicit)
			cur.children[c] = child
		case child.isDir():
		case child.ino.typ == layer.Symlink:
			hops++
			if hops > maxSymlinkHops {
				return nil, errors.New("too many levels of symbolic links in a parent path")
			}
			target := child.ino.link
			if strings.HasPrefix(target, "/") {
				stack = stack[:1]
			}
			rest := append(strings.Split(target, "/"), comps[i+1:]...)
			comps, i = rest, -1
			continue
		default:
			if !create {
				return nil, nil
			}
			return nil, fmt.Errorf("%w (%q is a %s)", errNotDir, c, child.ino.typ)
		}
		stack = append(stack, child)
	}
	return stack[len(stack)-1], nil
}

func (s *sim) plan() *Plan {
	p := &Plan{
		layers:  s.layers,
		actions: make([]map[int]*action, len(s.layers)),
		last:    make([]int, len(s.layers)),
	}
	for i := range p.actions {
		p.actions[i] = map[int]*action{}
		p.last[i] = -1
	}
	add := func(src srcRef, a *action) {
		p.actions[src.layer][src.ord] = a
		if src.ord > p.last[src.layer] {
			p.last[src.layer] = src.ord
		}
	}
	links := map[*inode][]string{}
	var walk func(n *node, dir string)
	walk = func(n *node, dir string) {
		for name, c := range n.children {
			p0 := path.Join(dir, name)
			if c.isDir() {
				p.Dirs++
				if c.src == implicit {
					p.implicitDirs = append(p.implicitDirs, p0)
				} else {
					add(c.src, &action{dir: true, paths: []string{p0}})
				}
				walk(c, p0)
				continue
			}
			links[c.ino] = append(links[c.ino], p0)
		}
	}
	walk(s.root, "")
	if s.root.src != implicit {
		add(s.root.src, &action{dir: true, paths: []string{""}})
	}
	sort.Strings(p.implicitDirs)
	for ino, paths := range links {
		sort.Strings(paths)
		add(ino.src, &action{paths: paths})
		p.Files++
		p.Hardlinks += len(paths) - 1
		if ino.typ == layer.Reg {
			p.ContentBytes += ino.size
		}
	}
	return p
}

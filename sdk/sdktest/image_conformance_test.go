package sdktest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
	"github.com/boxctl/boxctl/test/images/imagefixture"
	"github.com/boxctl/boxctl/test/testbin"
)

var bins testbin.Set

func TestMain(m *testing.M) {
	code := m.Run()
	bins.Cleanup()
	os.Exit(code)
}

// Environment of the subprocesses TestImageSourceConformanceCatchesFaults
// runs: the fault to inject and the plugin binary already built.
const (
	faultEnv  = "SDKTEST_IMAGE_FAULT"
	binaryEnv = "SDKTEST_OCI_BINARY"
)

func ociBinary(t *testing.T) string {
	if p := os.Getenv(binaryEnv); p != "" {
		return p
	}
	return filepath.Join(bins.Dir(t, "boxctl-plugin-oci"), "boxctl-plugin-oci")
}

// newOCI starts a fresh boxctl-plugin-oci process on an empty state
// directory; wrap, if set, injects a fault between the suite and it.
func newOCI(bin string, wrap func(t *testing.T, c sdk.ImageSourceClient) sdk.ImageSource) sdktest.NewImageSourceFunc {
	return func(t *testing.T) (sdk.ImageSource, string) {
		t.Setenv("DOCKER_CONFIG", t.TempDir())
		home := testbin.ShortTempDir(t)
		state := filepath.Join(home, "plugins-data", "oci")
		imgs := sdktest.StartPlugin(t, bin).Images
		if err := imgs.Configure(context.Background(), &sdk.Config{StateDir: state, Home: home}); err != nil {
			t.Fatalf("configure: %v", err)
		}
		if wrap != nil {
			return wrap(t, imgs), state
		}
		return imgs, state
	}
}

// The ImageSource suite against the oci plugin's binary, with busybox
// images in OCI layouts.
func TestImageSourceConformanceOCI(t *testing.T) {
	if os.Getenv(faultEnv) != "" {
		t.Skip("a fault-injection subprocess")
	}
	sdktest.ImageSourceConformance(t, newOCI(ociBinary(t), nil), imagefixture.Layouts(t))
}

// fault is a defect injected into a working plugin, and the check that must
// catch it.
type fault struct {
	name, check string
	wrap        func(t *testing.T, c sdk.ImageSourceClient) sdk.ImageSource
}

// untyped drops an error's kind, as a plugin that returns its own errors
// would.
func untyped(err error, kind error) error {
	if errors.Is(err, kind) {
		return fmt.Errorf("%s", err.Error())
	}
	return err
}

func faults() []fault {
	return []fault{
		{"no progress", "PullProgress", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, pull: func(ctx context.Context, req sdk.PullRequest, _ func(sdk.PullEvent)) (sdk.Image, error) {
				return c.Pull(ctx, req, nil)
			}}
		}},
		{"downloads again", "PullAgainIsCached", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, pull: func(ctx context.Context, req sdk.PullRequest, progress func(sdk.PullEvent)) (sdk.Image, error) {
				return c.Pull(ctx, req, func(ev sdk.PullEvent) {
					if ev.Layer != nil && ev.Layer.State == sdk.LayerCached {
						l := *ev.Layer
						l.State = sdk.LayerDone
						ev.Layer = &l
					}
					progress(ev)
				})
			}}
		}},
		{"drops the user", "ImageConfig", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, pull: func(ctx context.Context, req sdk.PullRequest, progress func(sdk.PullEvent)) (sdk.Image, error) {
				img, err := c.Pull(ctx, req, progress)
				img.Config.User = ""
				return img, err
			}}
		}},
		{"no digest prefixes", "GetImage", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, getImage: func(ctx context.Context, image string) (sdk.Image, error) {
				if strings.HasPrefix(image, "sha256:") && len(image) < len("sha256:")+64 {
					return sdk.Image{}, fmt.Errorf("%s: %w", image, sdk.ErrNotFound)
				}
				return c.GetImage(ctx, image)
			}}
		}},
		{"wrong root disk size", "RootDisk", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, rootDisk: func(ctx context.Context, image string) (sdk.RootDisk, error) {
				rd, err := c.RootDisk(ctx, image)
				rd.Size /= 2
				return rd, err
			}}
		}},
		{"root disk not ext4", "RootDisk", func(t *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, rootDisk: func(ctx context.Context, image string) (sdk.RootDisk, error) {
				rd, err := c.RootDisk(ctx, image)
				if err != nil {
					return rd, err
				}
				zeros := filepath.Join(t.TempDir(), "zeros.img")
				if err := os.WriteFile(zeros, make([]byte, rd.Size), 0o644); err != nil {
					return rd, err
				}
				rd.Path = zeros
				return rd, nil
			}}
		}},
		{"oldest first", "ListImagesNewestFirst", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, listImages: func(ctx context.Context) ([]sdk.Image, error) {
				imgs, err := c.ListImages(ctx)
				slices.Reverse(imgs)
				return imgs, err
			}}
		}},
		{"removing a tag removes the image", "RemoveTag", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, removeImage: func(ctx context.Context, image string) (sdk.Removed, error) {
				if img, err := c.GetImage(ctx, image); err == nil {
					image = img.Digest
				}
				return c.RemoveImage(ctx, image)
			}}
		}},
		{"removing by digest keeps a tag", "RemoveDigest", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, removeImage: func(ctx context.Context, image string) (sdk.Removed, error) {
				img, err := c.GetImage(ctx, image)
				if err != nil || image != img.Digest || len(img.References) < 2 {
					return c.RemoveImage(ctx, image)
				}
				return c.RemoveImage(ctx, img.References[0])
			}}
		}},
		{"prune ignores keep", "PruneKeeps", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, prune: func(ctx context.Context, req sdk.PruneRequest) (sdk.Removed, error) {
				req.Keep = nil
				return c.Prune(ctx, req)
			}}
		}},
		{"missing image untyped", "PullMissingImage", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, pull: func(ctx context.Context, req sdk.PullRequest, progress func(sdk.PullEvent)) (sdk.Image, error) {
				img, err := c.Pull(ctx, req, progress)
				return img, untyped(err, sdk.ErrNotFound)
			}}
		}},
		{"missing tag unavailable", "PullMissingTag", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, pull: func(ctx context.Context, req sdk.PullRequest, progress func(sdk.PullEvent)) (sdk.Image, error) {
				img, err := c.Pull(ctx, req, progress)
				if errors.Is(err, sdk.ErrNotFound) {
					err = fmt.Errorf("%s: %w", err.Error(), sdk.ErrUnavailable)
				}
				return img, err
			}}
		}},
		{"malformed untyped", "PullMalformedReference", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, pull: func(ctx context.Context, req sdk.PullRequest, progress func(sdk.PullEvent)) (sdk.Image, error) {
				img, err := c.Pull(ctx, req, progress)
				return img, untyped(err, sdk.ErrInvalidArgument)
			}}
		}},
		{"uncached root disk untyped", "Uncached", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, rootDisk: func(ctx context.Context, image string) (sdk.RootDisk, error) {
				rd, err := c.RootDisk(ctx, image)
				return rd, untyped(err, sdk.ErrNotFound)
			}}
		}},
		{"check pulls", "CheckReference", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, checkReference: func(ctx context.Context, req sdk.PullRequest) (string, error) {
				canonical, err := c.CheckReference(ctx, req)
				if err == nil {
					_, err = c.Pull(ctx, req, nil)
				}
				return canonical, err
			}}
		}},
		{"concurrent pulls fail", "ConcurrentPulls", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			busy := make(chan struct{}, 1)
			return &faulty{ImageSourceClient: c, pull: func(ctx context.Context, req sdk.PullRequest, progress func(sdk.PullEvent)) (sdk.Image, error) {
				select {
				case busy <- struct{}{}:
					defer func() { <-busy }()
				default:
					return sdk.Image{}, fmt.Errorf("another pull is running: %w", sdk.ErrInvalidState)
				}
				return c.Pull(ctx, req, progress)
			}}
		}},
		{"cancelled pull half-visible", "CancelledPull", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, pull: func(ctx context.Context, req sdk.PullRequest, progress func(sdk.PullEvent)) (sdk.Image, error) {
				img, err := c.Pull(context.WithoutCancel(ctx), req, progress)
				if err == nil && ctx.Err() != nil {
					// Finished, then reported as cancelled: the image is
					// cached although the caller was told it is not.
					return sdk.Image{}, ctx.Err()
				}
				return img, err
			}}
		}},
		{"commit drops the layer", "Commit", func(t *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			empty := filepath.Join(t.TempDir(), "empty.tar")
			if err := os.WriteFile(empty, make([]byte, 1024), 0o600); err != nil {
				t.Fatal(err)
			}
			return &faulty{ImageSourceClient: c, commit: func(ctx context.Context, req sdk.CommitRequest) (sdk.Image, error) {
				req.LayerPath = empty
				return c.Commit(ctx, req)
			}}
		}},
		{"commit errors untyped", "CommitRefusesBadInput", func(_ *testing.T, c sdk.ImageSourceClient) sdk.ImageSource {
			return &faulty{ImageSourceClient: c, commit: func(ctx context.Context, req sdk.CommitRequest) (sdk.Image, error) {
				img, err := c.Commit(ctx, req)
				return img, untyped(err, sdk.ErrInvalidArgument)
			}}
		}},
	}
}

// Every check can fail: each fault injected into the working plugin makes
// the check meant to catch it fail (in a subprocess, so that the failure
// is observed rather than suffered), with the dump of what it set up.
func TestImageSourceConformanceCatchesFaults(t *testing.T) {
	if os.Getenv(faultEnv) != "" {
		t.Skip("a fault-injection subprocess")
	}
	bin := ociBinary(t)
	for _, f := range faults() {
		t.Run(f.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run", "^TestImageSourceFault$/^"+f.check+"$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), faultEnv+"="+f.name, binaryEnv+"="+bin)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) {
				t.Fatalf("with the fault %q the check %s passed (%v):\n%s", f.name, f.check, err, out)
			}
			for _, want := range []string{"--- FAIL: TestImageSourceFault/" + f.check + " ", "--- image conformance dump", "calls:\n"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("with the fault %q the output lacks %q:\n%s", f.name, want, out)
				}
			}
		})
	}
}

// TestImageSourceFault is the subprocess of
// TestImageSourceConformanceCatchesFaults: the suite against the plugin
// with one fault injected.
func TestImageSourceFault(t *testing.T) {
	name := os.Getenv(faultEnv)
	if name == "" {
		t.Skip("run by TestImageSourceConformanceCatchesFaults")
	}
	i := slices.IndexFunc(faults(), func(f fault) bool { return f.name == name })
	if i < 0 {
		t.Fatalf("unknown fault %q", name)
	}
	sdktest.ImageSourceConformance(t, newOCI(ociBinary(t), faults()[i].wrap), imagefixture.Layouts(t))
}

// faulty is an image source client with some calls replaced.
type faulty struct {
	sdk.ImageSourceClient
	pull           func(context.Context, sdk.PullRequest, func(sdk.PullEvent)) (sdk.Image, error)
	getImage       func(context.Context, string) (sdk.Image, error)
	rootDisk       func(context.Context, string) (sdk.RootDisk, error)
	listImages     func(context.Context) ([]sdk.Image, error)
	removeImage    func(context.Context, string) (sdk.Removed, error)
	prune          func(context.Context, sdk.PruneRequest) (sdk.Removed, error)
	checkReference func(context.Context, sdk.PullRequest) (string, error)
	commit         func(context.Context, sdk.CommitRequest) (sdk.Image, error)
}

func (f *faulty) Commit(ctx context.Context, req sdk.CommitRequest) (sdk.Image, error) {
	if f.commit != nil {
		return f.commit(ctx, req)
	}
	return f.ImageSourceClient.Commit(ctx, req)
}

func (f *faulty) Pull(ctx context.Context, req sdk.PullRequest, progress func(sdk.PullEvent)) (sdk.Image, error) {
	if f.pull != nil {
		return f.pull(ctx, req, progress)
	}
	return f.ImageSourceClient.Pull(ctx, req, progress)
}

func (f *faulty) GetImage(ctx context.Context, image string) (sdk.Image, error) {
	if f.getImage != nil {
		return f.getImage(ctx, image)
	}
	return f.ImageSourceClient.GetImage(ctx, image)
}

func (f *faulty) RootDisk(ctx context.Context, image string) (sdk.RootDisk, error) {
	if f.rootDisk != nil {
		return f.rootDisk(ctx, image)
	}
	return f.ImageSourceClient.RootDisk(ctx, image)
}

func (f *faulty) ListImages(ctx context.Context) ([]sdk.Image, error) {
	if f.listImages != nil {
		return f.listImages(ctx)
	}
	return f.ImageSourceClient.ListImages(ctx)
}

func (f *faulty) RemoveImage(ctx context.Context, image string) (sdk.Removed, error) {
	if f.removeImage != nil {
		return f.removeImage(ctx, image)
	}
	return f.ImageSourceClient.RemoveImage(ctx, image)
}

func (f *faulty) Prune(ctx context.Context, req sdk.PruneRequest) (sdk.Removed, error) {
	if f.prune != nil {
		return f.prune(ctx, req)
	}
	return f.ImageSourceClient.Prune(ctx, req)
}

func (f *faulty) CheckReference(ctx context.Context, req sdk.PullRequest) (string, error) {
	if f.checkReference != nil {
		return f.checkReference(ctx, req)
	}
	return f.ImageSourceClient.CheckReference(ctx, req)
}

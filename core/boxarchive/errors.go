package boxarchive

import (
	"errors"
	"fmt"
	"strings"
)

// Kinds of refusal. Every error Reader returns for a bad archive is an
// *Error whose Kind is one of these (errors.Is matches them), so callers
// and tests can tell the problems apart; the message says which member and
// field were wrong.
var (
	// ErrNotArchive: the stream is not a tar, or its first member is not a
	// box archive manifest.
	ErrNotArchive = errors.New("not a box archive")
	// ErrVersion: a box archive of a format version this reader does not
	// know.
	ErrVersion = errors.New("unsupported box archive version")
	// ErrManifest: the manifest is malformed or breaks a rule of the
	// format (a missing field, a bad value, an unknown field).
	ErrManifest = errors.New("invalid manifest")
	// ErrTooLarge: a declared size is over the reader's limit.
	ErrTooLarge = errors.New("over the size limit")
	// ErrUnsafeName: a member name that is absolute or climbs out with
	// "..".
	ErrUnsafeName = errors.New("unsafe member name")
	// ErrMemberType: a member that is not a regular file (a link, a
	// directory, a device).
	ErrMemberType = errors.New("member is not a regular file")
	// ErrUndeclared: a member the manifest does not list, out of its
	// order, or listed twice.
	ErrUndeclared = errors.New("undeclared member")
	// ErrSize: a member whose bytes do not match its declared size.
	ErrSize = errors.New("size mismatch")
	// ErrChecksum: a member whose SHA-256 does not match the manifest.
	ErrChecksum = errors.New("checksum mismatch")
	// ErrCorrupt: a member that is not valid zstd, or an image member
	// that is not a valid OCI layout tar.
	ErrCorrupt = errors.New("corrupt member")
	// ErrTruncated: the archive ends before the last declared member.
	ErrTruncated = errors.New("archive truncated")
	// ErrNoSpace: the extraction directory has too little free space for
	// the declared members.
	ErrNoSpace = errors.New("not enough free space")
)

// Error is a refusal of an archive: what kind of problem, in which member
// (empty for the archive itself) and which manifest field (empty when no
// one field is at fault).
type Error struct {
	Kind   error
	Member string
	Field  string
	Detail string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("box archive: ")
	if e.Member != "" {
		fmt.Fprintf(&b, "member %q: ", e.Member)
	}
	if e.Field != "" {
		fmt.Fprintf(&b, "%s: ", e.Field)
	}
	b.WriteString(e.Kind.Error())
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Kind }

func refuse(kind error, member, field, format string, args ...any) *Error {
	return &Error{Kind: kind, Member: member, Field: field, Detail: fmt.Sprintf(format, args...)}
}

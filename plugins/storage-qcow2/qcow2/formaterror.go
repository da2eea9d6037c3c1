package qcow2

import "fmt"

// Problem classifies what is wrong with an image's on-disk structures.
type Problem int

// Problems reported in a *FormatError.
const (
	ProblemNotQcow2         Problem = iota + 1 // no qcow2 magic
	ProblemHeader                              // malformed header field or header extension
	ProblemUnsupported                         // valid but unsupported feature
	ProblemEncrypted                           // encrypted image
	ProblemBackingFile                         // image references a backing file
	ProblemExternalData                        // image uses an external data file
	ProblemTooLarge                            // size beyond a configured or implementation limit
	ProblemMisaligned                          // offset that must be cluster aligned is not
	ProblemOutsideFile                         // table or cluster lies outside the file
	ProblemInvalidEntry                        // table entry with reserved bits or impossible flags
	ProblemOverlap                             // metadata overlaps other metadata, the header, or data
	ProblemDoubleReference                     // a data cluster is referenced twice
	ProblemRefcountMismatch                    // refcount lower than, or different from, the references
	ProblemLeak                                // refcount on a cluster nothing references
)

var problemNames = map[Problem]string{
	ProblemNotQcow2:         "not qcow2",
	ProblemHeader:           "bad header",
	ProblemUnsupported:      "unsupported feature",
	ProblemEncrypted:        "encrypted",
	ProblemBackingFile:      "backing file reference",
	ProblemExternalData:     "external data file",
	ProblemTooLarge:         "too large",
	ProblemMisaligned:       "misaligned offset",
	ProblemOutsideFile:      "outside file",
	ProblemInvalidEntry:     "invalid table entry",
	ProblemOverlap:          "overlapping metadata",
	ProblemDoubleReference:  "cluster referenced twice",
	ProblemRefcountMismatch: "refcount mismatch",
	ProblemLeak:             "leaked cluster",
}

func (p Problem) String() string {
	if s, ok := problemNames[p]; ok {
		return s
	}
	return fmt.Sprintf("Problem(%d)", int(p))
}

func (p Problem) sentinel() error {
	switch p {
	case ProblemNotQcow2:
		return ErrNotQcow2
	case ProblemUnsupported, ProblemEncrypted, ProblemExternalData:
		return ErrUnsupported
	case ProblemBackingFile:
		return ErrBackingFile
	case ProblemTooLarge:
		return ErrTooLarge
	}
	return ErrCorrupt
}

// FormatError is a specific problem found in an image's structures, by
// Open or Validate. It unwraps to one of the sentinel errors (ErrCorrupt,
// ErrUnsupported, ErrBackingFile, ErrTooLarge, ErrNotQcow2).
type FormatError struct {
	Problem Problem
	// Offset is the file offset of the offending field, entry or
	// cluster, or -1 if there is no single place.
	Offset int64
	// Detail says what is wrong, naming tables and indexes.
	Detail string
}

func (e *FormatError) Error() string {
	s := fmt.Sprintf("%v: %v: %s", e.Problem.sentinel(), e.Problem, e.Detail)
	if e.Offset >= 0 {
		s += fmt.Sprintf(" (file offset %#x)", e.Offset)
	}
	return s
}

func (e *FormatError) Unwrap() error { return e.Problem.sentinel() }

func formatErr(p Problem, off int64, format string, args ...any) *FormatError {
	return &FormatError{Problem: p, Offset: off, Detail: fmt.Sprintf(format, args...)}
}

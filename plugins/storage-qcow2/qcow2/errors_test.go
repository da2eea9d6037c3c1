package qcow2

import (
	"errors"
	"fmt"
	"testing"

	"github.com/boxctl/boxctl/sdk"
)

// TestErrorKinds: the storage plugin passes these errors to the sdk
// unmapped, so each must match the sdk kind it crosses the wire as, also
// when wrapped in a FormatError.
func TestErrorKinds(t *testing.T) {
	for _, c := range []struct {
		err, kind error
	}{
		{ErrNotQcow2, sdk.ErrInvalidArgument},
		{ErrUnsupported, sdk.ErrUnsupported},
		{ErrCorrupt, sdk.ErrInvalidArgument},
		{ErrBackingFile, sdk.ErrInvalidArgument},
		{ErrTooLarge, sdk.ErrInvalidArgument},
		{ErrReadOnly, sdk.ErrInvalidState},
		{ErrOutOfRange, sdk.ErrInvalidArgument},
		{formatErr(ProblemEncrypted, 0, "x"), sdk.ErrUnsupported},
		{formatErr(ProblemOverlap, 0, "x"), sdk.ErrInvalidArgument},
	} {
		wrapped := fmt.Errorf("open qcow2 /x: %w", c.err)
		if !errors.Is(wrapped, c.kind) {
			t.Errorf("%v does not match %v", c.err, c.kind)
		}
	}
}

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/boxctl/boxctl/internal/proc"
	"github.com/boxctl/boxctl/sdk"
)

// stateHeader starts every state file the double writes.
const stateHeader = "procvmm-state 1\n"

// savedState is a state file's JSON.
type savedState struct {
	BoxID  string            `json:"box_id"`
	Inputs map[string]string `json:"inputs"`
	Disks  []sdk.DiskSpec    `json:"disks"`
}

func stateInputs(spec sdk.VMSpec) map[string]string {
	var disks []string
	for _, d := range spec.Disks {
		mode := "rw"
		if d.ReadOnly {
			mode = "ro"
		}
		disks = append(disks, d.Role.String()+":"+mode)
	}
	net := "none"
	if spec.Network.Mode == sdk.NetworkUser {
		net = "user"
	}
	return map[string]string{
		"vmm":     "procvmm 0.1.0",
		"vcpus":   strconv.Itoa(spec.VCPUs),
		"memory":  strconv.FormatUint(spec.MemoryMiB, 10) + "M",
		"devices": fmt.Sprintf("disks=[%s] net=%s", strings.Join(disks, ","), net),
	}
}

func (p *procVMM) StateInputs(_ context.Context, spec sdk.VMSpec) (map[string]string, error) {
	p.misbehave("StateInputs")
	return stateInputs(spec), nil
}

// SaveState checks that the "VM" is paused and writes the state file under
// a temporary name, linked to path once complete.
func (p *procVMM) SaveState(_ context.Context, vm sdk.VM, path string) (sdk.SavedState, error) {
	p.misbehave("SaveState")
	var h handle
	if err := json.Unmarshal(vm.Handle, &h); err != nil || h.RunDir == "" || len(h.Inputs) == 0 {
		return sdk.SavedState{}, fmt.Errorf("bad VM handle: %w", sdk.ErrInvalidArgument)
	}
	st, err := proc.ReadStat(vm.PID)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return sdk.SavedState{}, fmt.Errorf("the VM process %d is gone: %w", vm.PID, sdk.ErrInvalidState)
	case err != nil:
		return sdk.SavedState{}, err
	case st.State != 'T':
		return sdk.SavedState{}, fmt.Errorf("SaveState: the VM runs (process state %c): pause it first: %w", st.State, sdk.ErrInvalidState)
	}
	if _, err := os.Lstat(path); err == nil {
		return sdk.SavedState{}, fmt.Errorf("SaveState: %s exists: %w", path, sdk.ErrAlreadyExists)
	}
	if strings.EqualFold(p.settings().FailOn, "SaveState") {
		return sdk.SavedState{}, errors.New("SaveState failing on purpose (fail_on)")
	}
	var r diskRecord
	if b, err := os.ReadFile(filepath.Join(h.RunDir, diskRecordFile)); err == nil {
		_ = json.Unmarshal(b, &r)
	}
	s := savedState{BoxID: h.BoxID, Inputs: h.Inputs}
	for _, d := range r.Disks {
		s.Disks = append(s.Disks, d.DiskSpec)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return sdk.SavedState{}, err
	}
	data := append([]byte(stateHeader), b...)
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return sdk.SavedState{}, fmt.Errorf("SaveState: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(f.Name(), path)
	}
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return sdk.SavedState{}, fmt.Errorf("SaveState: %s exists: %w", path, sdk.ErrAlreadyExists)
		}
		return sdk.SavedState{}, fmt.Errorf("SaveState: %w", err)
	}
	return sdk.SavedState{Size: int64(len(data)), Inputs: maps.Clone(h.Inputs)}, nil
}

// checkRestore refuses a state whose inputs differ from the spec's, or a
// file that is not a state.
func checkRestore(spec sdk.VMSpec) error {
	r := spec.Restore
	now := stateInputs(spec)
	names := slices.Sorted(maps.Keys(now))
	for k := range r.Inputs {
		if _, ok := now[k]; !ok {
			names = append(names, k)
		}
	}
	for _, k := range names {
		was, wok := r.Inputs[k]
		is, nok := now[k]
		if wok && nok && was == is {
			continue
		}
		return fmt.Errorf("saved state %s: input %q was %q when it was saved and is %q now: it cannot be restored; discard it: %w", r.Path, k, was, is, sdk.ErrInvalidState)
	}
	f, err := os.Open(r.Path)
	if err != nil {
		return fmt.Errorf("saved state: %w: %w", err, sdk.ErrInvalidArgument)
	}
	defer f.Close()
	head := make([]byte, len(stateHeader))
	if _, err := io.ReadFull(f, head); err != nil || string(head) != stateHeader {
		return fmt.Errorf("saved state %s is not a procvmm state file: discard it: %w", r.Path, sdk.ErrInvalidArgument)
	}
	return nil
}

// readState reads a whole state file, as the restored "VM" does.
func readState(path string) (savedState, error) {
	f, err := os.Open(path)
	if err != nil {
		return savedState{}, err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	head, err := br.ReadString('\n')
	if err != nil || head != stateHeader {
		return savedState{}, fmt.Errorf("%s: not a procvmm state file", path)
	}
	var s savedState
	if err := json.NewDecoder(br).Decode(&s); err != nil {
		return savedState{}, fmt.Errorf("%s: truncated or corrupt state: %w", path, err)
	}
	return s, nil
}

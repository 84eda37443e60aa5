package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// cpuSet is a sorted list of CPU numbers, written as taskset -c and
// /proc/<pid>/status (Cpus_allowed_list) write them: "0", "0-1", "0,2-3".
type cpuSet []int

// maxCPU bounds the CPU numbers a list may name (the kernel's CPU_SETSIZE
// as glibc and x/sys/unix define it).
const maxCPU = 1024

func parseCPUList(s string) (cpuSet, error) {
	var set cpuSet
	for part := range strings.SplitSeq(strings.TrimSpace(s), ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 0 || b < a || b >= maxCPU {
			return nil, fmt.Errorf("CPU list %q: %q is not a CPU number or an ascending range below %d", s, part, maxCPU)
		}
		for c := a; c <= b; c++ {
			set = append(set, c)
		}
	}
	slices.Sort(set)
	return slices.Compact(set), nil
}

// String writes the set in list form, ranges collapsed: "0-1,3".
func (s cpuSet) String() string {
	var parts []string
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(s[i]))
		} else {
			parts = append(parts, strconv.Itoa(s[i])+"-"+strconv.Itoa(s[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

func (s cpuSet) overlaps(o cpuSet) bool {
	return slices.ContainsFunc(s, func(c int) bool { return slices.Contains(o, c) })
}

func (s cpuSet) within(o cpuSet) bool {
	return !slices.ContainsFunc(s, func(c int) bool { return !slices.Contains(o, c) })
}

// allowedCPUs is the CPU affinity of a process (pid 0: this one) or, with
// a task directory such as "/proc/self/task/123", of one thread, from
// Cpus_allowed_list in its status file.
func allowedCPUs(proc string) (cpuSet, error) {
	b, err := os.ReadFile(proc + "/status")
	if err != nil {
		return nil, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			return parseCPUList(v)
		}
	}
	return nil, fmt.Errorf("%s/status: no Cpus_allowed_list", proc)
}

// The values of -soak-pin besides an explicit "SERVER:GEN".
const (
	pinAuto = "auto" // split the CPUs when there are two or more and taskset is on PATH
	pinOff  = "off"
)

// pinSpec is -soak-pin, checked for syntax only (no side effects).
type pinSpec struct {
	mode        string // pinAuto, pinOff or "" for explicit sets
	server, gen cpuSet
}

func parsePinSpec(s string) (pinSpec, error) {
	switch s {
	case pinAuto, pinOff:
		return pinSpec{mode: s}, nil
	}
	srv, gen, ok := strings.Cut(s, ":")
	if !ok {
		return pinSpec{}, fmt.Errorf("-soak-pin %q: want auto, off or SERVER_CPUS:GENERATOR_CPUS such as 0:1", s)
	}
	var p pinSpec
	var err1, err2 error
	p.server, err1 = parseCPUList(srv)
	p.gen, err2 = parseCPUList(gen)
	if err := errors.Join(err1, err2); err != nil {
		return pinSpec{}, fmt.Errorf("-soak-pin: %w", err)
	}
	if p.server.overlaps(p.gen) {
		return pinSpec{}, fmt.Errorf("-soak-pin %q: the server's and the generator's CPUs overlap", s)
	}
	return p, nil
}

// pinning is where the soak's processes run: the server child on server,
// this process (the load generator) and the external etcd on gen. With
// server nil nothing is pinned and why says so.
type pinning struct {
	server, gen cpuSet
	why         string
}

func (p pinning) on() bool { return p.server != nil }

// plan turns the spec into CPU sets on this machine. Auto splits the CPUs
// this process may use in two halves, the server on the lower one, and
// falls back to no pinning (saying why) on one CPU or without taskset; an
// explicit spec fails instead.
func (s pinSpec) plan() (pinning, error) {
	if s.mode == pinOff {
		return pinning{why: "-soak-pin off"}, nil
	}
	allowed, err := allowedCPUs("/proc/self")
	if err != nil {
		return pinning{}, fmt.Errorf("read this process's CPU affinity: %w", err)
	}
	_, lookErr := exec.LookPath("taskset")
	if s.mode == pinAuto {
		switch {
		case len(allowed) < 2:
			return pinning{why: fmt.Sprintf("only %d CPU available (%s)", len(allowed), allowed)}, nil
		case lookErr != nil:
			return pinning{why: "taskset (util-linux) is not on PATH"}, nil
		}
		half := len(allowed) / 2
		return pinning{server: allowed[:half], gen: allowed[half:]}, nil
	}
	if lookErr != nil {
		return pinning{}, fmt.Errorf("-soak-pin %s:%s needs taskset from util-linux on PATH (scripts/install-test-deps.sh installs it): %w", s.server, s.gen, lookErr)
	}
	if !s.server.within(allowed) || !s.gen.within(allowed) {
		return pinning{}, fmt.Errorf("-soak-pin %s:%s: this process may only use CPUs %s", s.server, s.gen, allowed)
	}
	return pinning{server: s.server, gen: s.gen}, nil
}

// tasksetCommand is name with args run on cpus by taskset, which sets the
// affinity and then executes the command, so the process has it from its
// first instruction, every thread included, and keeps taskset's pid.
// With cpus nil it is the plain command.
func tasksetCommand(cpus cpuSet, name string, args ...string) *exec.Cmd {
	if cpus == nil {
		return exec.Command(name, args...)
	}
	return exec.Command("taskset", append([]string{"-c", cpus.String(), name}, args...)...)
}

// checkAffinity verifies that a process runs on exactly cpus.
func checkAffinity(pid int, cpus cpuSet) error {
	got, err := allowedCPUs("/proc/" + strconv.Itoa(pid))
	if err != nil {
		return err
	}
	if !slices.Equal(got, cpus) {
		return fmt.Errorf("process %d runs on CPUs %s, want %s", pid, got, cpus)
	}
	return nil
}

// pinSelf moves every thread of this process onto cpus and sets GOMAXPROCS
// to their number; restore undoes both. sched_setaffinity acts on one
// thread, and Go runs goroutines on several, so each thread in
// /proc/self/task is set; a thread the runtime starts later inherits the
// mask of the thread that clones it, which is then already set. Passes
// repeat until one finds every thread on cpus, to catch threads started
// during the previous pass.
func pinSelf(cpus cpuSet) (restore func() error, err error) {
	prev, err := allowedCPUs("/proc/self")
	if err != nil {
		return nil, err
	}
	if err := setAllThreads(cpus); err != nil {
		_ = setAllThreads(prev)
		return nil, err
	}
	prevProcs := runtime.GOMAXPROCS(len(cpus))
	return func() error {
		runtime.GOMAXPROCS(prevProcs)
		return setAllThreads(prev)
	}, nil
}

func setAllThreads(cpus cpuSet) error {
	var mask unix.CPUSet
	for _, c := range cpus {
		mask.Set(c)
	}
	for range 10 {
		tids, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		changed := false
		for _, t := range tids {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			var cur unix.CPUSet
			if err := unix.SchedGetaffinity(tid, &cur); err != nil {
				continue // the thread exited
			}
			if cur == mask {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &mask); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("set CPU affinity of thread %d to %s: %w", tid, cpus, err)
			}
			changed = true
		}
		if !changed {
			return nil
		}
	}
	return fmt.Errorf("set CPU affinity to %s: threads kept appearing", cpus)
}

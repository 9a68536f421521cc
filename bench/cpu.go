package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of the times in /proc/<pid>/stat; it is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// cpuMeter sums the CPU time of the server processes: the given pids, and
// every process whose comm matches.
type cpuMeter struct {
	pids []int
	comm *regexp.Regexp
}

func newCPUMeter(pids, comm string) (*cpuMeter, error) {
	m := &cpuMeter{}
	for _, p := range strings.Split(pids, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("-server-pids: %q is not a pid", p)
		}
		m.pids = append(m.pids, n)
	}
	re, err := compileComm(comm)
	if err != nil {
		return nil, fmt.Errorf("-server-comm: %v", err)
	}
	m.comm = re
	return m, nil
}

func (m *cpuMeter) enabled() bool { return m != nil && (len(m.pids) > 0 || m.comm != nil) }

// cpuUsage is what was measured over the window.
type cpuUsage struct {
	server      float64 // seconds; -1 when not measured
	serverProcs int     // processes seen at the end of the window
	client      float64 // seconds of this process
}

// measure sleeps to the window's start, samples, sleeps to its end and
// samples again.
func (m *cpuMeter) measure(ctx context.Context, w window) (cpuUsage, error) {
	if err := sleepUntil(ctx, w.start); err != nil {
		return cpuUsage{}, nil // the caller reports the interruption
	}
	s0, _, err := m.sample()
	if err != nil {
		return cpuUsage{}, err
	}
	c0 := selfCPU()
	if err := sleepUntil(ctx, w.end); err != nil {
		return cpuUsage{}, nil
	}
	s1, n, err := m.sample()
	if err != nil {
		return cpuUsage{}, err
	}
	u := cpuUsage{server: -1, serverProcs: n, client: selfCPU() - c0}
	if m.enabled() {
		u.server = s1 - s0
	}
	return u, nil
}

func sleepUntil(ctx context.Context, t time.Time) error {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sample returns the summed utime+stime+cutime+cstime in seconds of the
// server processes and how many there are. The children's times count so
// that a PostgreSQL backend that exits inside the window is not lost: the
// postmaster reaps it into its cutime.
func (m *cpuMeter) sample() (float64, int, error) {
	if !m.enabled() {
		return 0, 0, nil
	}
	seen := map[int]bool{}
	var ticks uint64
	add := func(pid int, st procStat) {
		if !seen[pid] {
			seen[pid] = true
			ticks += st.ticks
		}
	}
	for _, pid := range m.pids {
		st, err := readProcStat(pid)
		if err != nil {
			return 0, 0, fmt.Errorf("server pid %d: %w", pid, err)
		}
		add(pid, st)
	}
	if m.comm != nil {
		ents, err := os.ReadDir("/proc")
		if err != nil {
			return 0, 0, err
		}
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			st, err := readProcStat(pid)
			if err != nil {
				continue // exited meanwhile
			}
			if m.comm.MatchString(st.comm) {
				add(pid, st)
			}
		}
	}
	return float64(ticks) / clockTicks, len(seen), nil
}

type procStat struct {
	comm  string
	ticks uint64 // utime + stime + cutime + cstime
}

// readProcStat parses /proc/<pid>/stat. comm is between the first '(' and
// the last ')' (it may hold spaces and parentheses); fields 14-17 are
// utime, stime, cutime, cstime.
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	s := string(b)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return procStat{}, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[closing+1:])
	// fields[0] is field 3 (state); utime is field 14.
	if len(fields) < 15 {
		return procStat{}, fmt.Errorf("short /proc/%d/stat", pid)
	}
	var ticks uint64
	for _, f := range fields[11:15] {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("/proc/%d/stat: %v", pid, err)
		}
		if v > 0 {
			ticks += uint64(v)
		}
	}
	return procStat{comm: s[open+1 : closing], ticks: ticks}, nil
}

// selfCPU is this process's user+system CPU time in seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

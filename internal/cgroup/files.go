package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
)

// This file reads and writes cgroupfs files: one value per write(2), flat keyed files
// ("key value" lines: memory.stat, memory.events, cgroup.events), lists of PIDs.

// writeFile writes s to a cgroup file in one write, as cgroupfs requires, without truncating
// or creating it.
func writeFile(name, s string) error {
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	return err
}

// readLine reads a one-line file, without its newline.
func readLine(name string) (string, error) {
	b, err := os.ReadFile(name)
	return strings.TrimSpace(string(b)), err
}

// readOr reads a one-line file, "" if it cannot.
func readOr(name string) string {
	s, _ := readLine(name)
	return s
}

func readUint(name string) (uint64, error) {
	s, err := readLine(name)
	if err != nil {
		return 0, err
	}
	if s == "max" {
		return 0, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

// readKeyed reads a flat keyed file: "key value" per line.
func readKeyed(name string) (map[string]uint64, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	return parseKeyed(b), nil
}

// parseKeyed parses "key value" lines, skipping any line that is not one (a future kernel's
// nested keys, say).
func parseKeyed(b []byte) map[string]uint64 {
	m := make(map[string]uint64, 64)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(value, 10, 64); err == nil {
			m[key] = n
		}
	}
	return m
}

func readPIDs(name string) ([]int, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// errText is err's message without the *PathError's operation and file, which the callers
// name themselves.
func errText(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

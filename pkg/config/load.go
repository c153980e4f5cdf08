package config

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// Load builds the Config forkd runs with: the file named by f.Config (none in quick mode), then
// every flag that was given on top of it, then defaults for whatever is still unset, then validation.
//
// Problems in the file are returned together as a *DiagnosticsError. Problems in flags (including the
// command after "--") are returned as a plain error naming the flag; when there are any, problems in
// the file are not reported until they are fixed. An unreadable file is a plain error wrapping the
// cause, so errors.Is(err, fs.ErrNotExist) works.
func Load(f Flags) (*Config, error) {
	b := newBuilder(f.Config, f.Config == "")
	if f.Config != "" {
		src, err := os.ReadFile(f.Config)
		if err != nil {
			var pathErr *fs.PathError
			if errors.As(err, &pathErr) {
				err = pathErr.Err // the path is in our own message; "open" would only repeat it
			}
			return nil, fmt.Errorf("config: read %s: %w", f.Config, err)
		}
		if !b.decodeFile(src, f.Config) {
			return nil, b.err()
		}
	}
	b.applyFlags(f)
	return b.finish()
}

// LoadFile loads the config file at path with no flag overrides: Load(Flags{Config: path}).
func LoadFile(path string) (*Config, error) {
	return Load(Flags{Config: path})
}

// Parse builds a Config from the contents of a config file, as Load does for a file named filename
// but without reading it or applying flags. filename names the file in diagnostics, gives the
// default Name, and is the base for relative paths in the file.
func Parse(src []byte, filename string) (*Config, error) {
	b := newBuilder(filename, false)
	if !b.decodeFile(src, filename) {
		return nil, b.err()
	}
	return b.finish()
}

// builder assembles a Config from a file and flags, remembering where each value came from (see
// sources) so that a problem is reported where the user wrote it.
type builder struct {
	cfg Config
	src sources

	// quick is set when there is no config file: every value comes from a flag or a default, and
	// every problem is a plain error.
	quick bool
	// fileDir is the absolute directory of the config file; relative paths in the file are
	// resolved against it, so the file means the same thing whatever forkd's working directory.
	fileDir string

	files    map[string]*hcl.File
	diags    hcl.Diagnostics
	flagErrs []error

	// programAsWritten is the file's relative program path, when fillDefaults made it absolute.
	programAsWritten string
}

func newBuilder(file string, quick bool) *builder {
	b := &builder{quick: quick}
	b.cfg.File = file
	if !quick {
		dir, err := filepath.Abs(filepath.Dir(file))
		if err != nil {
			dir = filepath.Dir(file)
		}
		b.fileDir = dir
	}
	b.src = defaultSources(quick)
	return b
}

// finish fills defaults, validates, and returns the Config or the problems found.
func (b *builder) finish() (*Config, error) {
	b.fillDefaults()
	b.validate()
	if err := b.err(); err != nil {
		return nil, err
	}
	cfg := b.cfg
	return &cfg, nil
}

// err returns the problems found so far: flag problems first (see Load), then the file's.
func (b *builder) err() error {
	if len(b.flagErrs) > 0 {
		return errors.Join(b.flagErrs...)
	}
	if !b.diags.HasErrors() {
		return nil
	}
	// HCL reports some problems in map order; sort so the output follows the file, with problems
	// about the file as a whole last.
	diags := slices.Clone(b.diags)
	slices.SortStableFunc(diags, func(a, b *hcl.Diagnostic) int {
		switch {
		case a.Subject == nil && b.Subject == nil:
			return 0
		case a.Subject == nil:
			return 1
		case b.Subject == nil:
			return -1
		}
		return cmp.Or(
			strings.Compare(a.Subject.Filename, b.Subject.Filename),
			cmp.Compare(a.Subject.Start.Byte, b.Subject.Start.Byte),
		)
	})
	return &DiagnosticsError{File: b.cfg.File, Diagnostics: diags, Files: b.files}
}

// fillDefaults sets every value that neither the file nor a flag gave.
func (b *builder) fillDefaults() {
	c, s := &b.cfg, &b.src
	if !s.name.given {
		c.Name = "forkd"
		if c.File != "" {
			base := filepath.Base(c.File)
			c.Name = strings.TrimSuffix(base, filepath.Ext(base))
		}
	}
	if p := c.Command; len(p) > 0 && s.command.given && !s.command.flag && c.Directory == "" && b.fileDir != "" &&
		strings.Contains(p[0], "/") && !filepath.IsAbs(p[0]) {
		// A program path in the file means the same wherever forkd runs, as every path in it does.
		// (With a directory, it stays relative to the workers' working directory.)
		c.Command = slices.Clone(p)
		c.Command[0] = filepath.Join(b.fileDir, p[0])
		b.programAsWritten = p[0]
	}
	if !s.workers.given {
		// Capped so the default is valid on a machine with more CPUs than MaxWorkers.
		c.Workers = min(runtime.NumCPU(), MaxWorkers)
	}
	if !s.readiness.given {
		c.Readiness = defaultReadiness(b.quick, c.ForkWorker != nil)
	}
	if !s.fdStore.given {
		c.Systemd.FDStore = FDStoreAuto
	}
	for i := range c.Listeners {
		l, ls := &c.Listeners[i], &s.listeners[i]
		if !ls.backlog.given {
			l.Backlog = DefaultBacklog
		}
		// Mode is the permission of the socket's file, so only a unix socket with a path has one.
		if !ls.mode.given && l.Network == "unix" && !strings.HasPrefix(l.Address, "@") {
			l.Mode = DefaultSocketMode
		}
	}
	if !s.boot.given {
		c.Timeouts.Boot = DefaultBootTimeout
	}
	if !s.shutdown.given {
		c.Timeouts.Shutdown = DefaultShutdownTimeout
	}
	if !s.backoffMin.given {
		c.Restart.BackoffMin = DefaultBackoffMin
	}
	if !s.backoffMax.given {
		c.Restart.BackoffMax = DefaultBackoffMax
	}
	if !s.resetAfter.given {
		c.Restart.ResetAfter = DefaultResetAfter
	}
	if fw := c.ForkWorker; fw != nil {
		if !s.reforkAfter.given {
			fw.ReforkAfter, fw.ReforkAfterRepeats = slices.Clone(DefaultReforkAfter), DefaultReforkAfterRepeats
		}
		if !s.forkTimeout.given {
			fw.Timeout = DefaultForkTimeout
		}
		if !s.reforkFrom.given {
			fw.ReforkFrom = DefaultReforkFrom
		}
		if !s.reforkNice.given {
			fw.ReforkNice = DefaultReforkNice
		}
		if !s.carryHeap.given {
			fw.CarryHeapSize = DefaultCarryHeapSize
		}
		if fw.WarmUp == nil {
			fw.WarmUp = &WarmUp{} // on by default
		}
		if w := fw.WarmUp; w != nil && !s.warmMaxWait.given {
			w.MaxWait = DefaultWarmUpMaxWait
		}
		if w := fw.WarmUp; w != nil && !s.warmRequests.given {
			w.Requests = DefaultWarmUpRequests
		}
		if p := fw.ReforkOnDecay; p != nil {
			if !s.decayGrowth.given && !s.decayRatio.given {
				p.PrivateGrowth = DefaultDecayPrivateGrowth
			}
			if !s.decayInterval.given {
				p.MinInterval = DefaultDecayMinInterval
			}
			if !s.decayFruitless.given {
				p.MaxFruitless = DefaultDecayMaxFruitless
			}
		}
	}
	if !s.hookTimeout.given {
		c.Hooks.Timeout = DefaultHookTimeout
	}
	if !s.maxSurge.given {
		c.Rollout.MaxSurge = DefaultMaxSurge
	}
	if !s.maxUnavailable.given {
		c.Rollout.MaxUnavailable = DefaultMaxUnavailable
	}
	if !s.socket.given {
		c.Control.Socket = DefaultControlSocket(c.Name)
	}
	if !s.workerAccess.given {
		c.Control.WorkerAccess = WorkerAccessNone
	}
	if !s.notifyDirectory.given && !c.Notify.Abstract {
		c.Notify.Directory = DefaultNotifyDirectory(c.Control.Socket)
	}
	if !s.cgroupsMode.given {
		c.Cgroups.Mode = CgroupsAuto
	}
	if !s.sampleInterval.given {
		c.Memory.SampleInterval = DefaultMemorySampleInterval
	}
	if !s.level.given {
		c.Log.Level = "info"
	}
	if !s.format.given {
		c.Log.Format = "auto"
	}
}

// defaultReadiness is readiness when neither the file nor --readiness sets it. A config file is
// written for forkd, so its app is expected to say READY=1, as under systemd's Type=notify. Quick
// mode runs an app as it is, as the README's first example does, and most apps do not speak
// sd_notify: their workers count as ready once started, which loses nothing, since connections
// wait in the listen socket's backlog until the app accepts. Fork-worker mode needs the SDKs, which
// say READY=1, and a template that is ready before it says it can fork would never be one.
func defaultReadiness(quick, forkWorker bool) Readiness {
	if quick && !forkWorker {
		return ReadyOnStart
	}
	return ReadyOnNotify
}

// resolvePath makes a relative path from the file absolute against the file's directory, and one
// from a flag absolute against forkd's working directory (so a later chdir cannot change it).
func (b *builder) resolvePath(path string, fromFlag bool) string {
	if path == "" || filepath.IsAbs(path) {
		return path
	}
	if !fromFlag && b.fileDir != "" {
		return filepath.Join(b.fileDir, path)
	}
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
}

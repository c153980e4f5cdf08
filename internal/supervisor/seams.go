package supervisor

import (
	"github.com/forkd/forkd/pkg/cluster"
	"github.com/forkd/forkd/pkg/protocol"
)

// seams are the real master's Seams: the driver's syscalls. What they learn goes to the
// executor's inbox (Driver.learn), never into the machine directly.
type seams struct{ d *Driver }

func (s seams) Spawn(a cluster.SpawnWorker) {
	if a.Template != 0 {
		s.d.forkWorker(a)
	} else {
		s.d.spawn(a)
	}
}

func (s seams) CancelSpawn(id cluster.WorkerID) { s.d.cancelSpawn(id) }

func (s seams) Control(a cluster.Action) {
	switch a := a.(type) {
	case cluster.SendWelcome:
		msg := protocol.Message{Op: protocol.OpWelcome, Worker: a.Slot, Generation: a.Generation}
		if a.NonServing {
			msg.Serve = new(false)
		}
		msg.ReportHeap = a.ReportHeap
		s.d.controlWorker(a.Worker, msg)
	case cluster.SendRefuse:
		s.d.controlWorker(a.Worker, protocol.Message{Op: protocol.OpRefuse, Error: a.Reason})
	case cluster.PauseTemplate:
		s.d.controlWorker(a.Worker, protocol.Message{Op: protocol.OpPause})
	case cluster.ResumeTemplate:
		s.d.controlWorker(a.Worker, protocol.Message{Op: protocol.OpResume})
	}
}

func (s seams) Signal(a cluster.SignalWorker)       { s.d.signal(a) }
func (s seams) Priority(a cluster.SetPriority)      { s.d.setPriority(a) }
func (s seams) SignalStray(a cluster.SignalStray)   { s.d.signalStray(a) }
func (s seams) Systemd(state string)                { s.d.notifySystemd(state) }
func (s seams) RunHook(a cluster.RunHook)           { s.d.runHook(a) }
func (s seams) LoadConfig(cluster.LoadConfig)       { s.d.loadConfig() }
func (s seams) ReleaseSpec(h cluster.SpecHandle)    { delete(s.d.specs, h) }
func (s seams) CheckRestart(a cluster.CheckRestart) { s.d.checkRestart(a.KeepWorkers) }
func (s seams) Exec(a cluster.ExecRestart)          { s.d.execRestart(a) }

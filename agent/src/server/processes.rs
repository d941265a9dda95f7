//! Processes the agent started: their exit, reaped from SIGCHLD, and its report once their
//! output is delivered.

use super::streams::receive_pty;
use super::*;

impl Server {
    pub(super) fn add_proc(&mut self, key: &ProcKey, pid: i32, mut plan: Kept) -> io::Result<()> {
        let mut proc = Proc {
            pid,
            stdin: None,
            stdout: None,
            stderr: None,
            pty: None,
            exit: None,
            waiters: Vec::new(),
            reported: false,
        };
        if let Some(console) = plan.console.take() {
            let master = receive_pty(&console.listener)?;
            drop(console);
            let out = master.try_clone()?;
            let input = master.try_clone()?;
            proc.stdout = Some(self.new_relay(key, Some(out), None)?);
            proc.stdin = Some(self.new_relay(key, None, Some(input))?);
            proc.pty = Some(master);
        } else {
            if let Some(w) = plan.stdin.take() {
                proc.stdin = Some(self.new_relay(key, None, Some(w))?);
            }
            if let Some(r) = plan.stdout.take() {
                proc.stdout = Some(self.new_relay(key, Some(r), None)?);
            }
            if let Some(r) = plan.stderr.take() {
                proc.stderr = Some(self.new_relay(key, Some(r), None)?);
            }
            for r in plan.discard.drain(..) {
                let id = self.add_relay(Some(key), Relay::discard(r))?;
                self.sync_relay(id);
                if proc.stdout.is_none() {
                    proc.stdout = Some(id);
                } else {
                    proc.stderr = Some(id);
                }
            }
        }
        self.pids.insert(pid, key.clone());
        self.procs.insert(key.clone(), proc);
        Ok(())
    }

    pub(super) fn reap(&mut self) {
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let (pid, code, signal) = match status {
                WaitStatus::Exited(pid, code) => (pid, code, None),
                WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as i32, Some(sig as i32)),
                _ => continue,
            };
            let Some(key) = self.pids.remove(&pid.as_raw()) else {
                crate::debug!("reaped pid {pid} ({status:?})");
                continue;
            };
            crate::debug!("{} exited: {status:?}", proc_name(&key));
            let mut oom_killed = false;
            if let Some(c) = self.containers.get_mut(&key.0) {
                let kills = cgroup::oom_kills(&c.container.cgroup);
                crate::debug!(
                    "{}: {kills} OOM kills in {}",
                    proc_name(&key),
                    c.container.cgroup.display()
                );
                if kills > c.oom_kills {
                    c.oom_kills = kills;
                    oom_killed = signal == Some(libc::SIGKILL);
                    let container_id = key.0.clone();
                    self.broadcast(Event::Oom { container_id });
                }
            }
            if let Some(p) = self.procs.get_mut(&key) {
                p.exit = Some(ProcessExit {
                    container_id: key.0.clone(),
                    exec_id: key.1.clone(),
                    status: code,
                    signal,
                    oom_killed,
                    exited_at_unix_nanos: now_nanos(),
                });
                // Nobody reads the stdin of a dead process.
                if let Some(stdin) = p.stdin {
                    if let Some(e) = self.relays.get_mut(&stdin) {
                        e.relay.close_src();
                    }
                    self.sync_relay(stdin);
                }
            }
            self.maybe_report(&key);
        }
    }

    /// A process is reported (event and waiters) once it has exited and its stdout and stderr
    /// have reached the host: a host that sees the exit has every byte written before it.
    pub(super) fn maybe_report(&mut self, key: &ProcKey) {
        let Some(p) = self.procs.get_mut(key) else {
            return;
        };
        if p.reported || p.exit.is_none() {
            return;
        }
        let busy = |r: Option<u64>| r.is_some_and(|id| self.relays.contains_key(&id));
        if busy(p.stdout) || busy(p.stderr) {
            crate::debug!("{} exited; its output is still flowing", proc_name(key));
            return;
        }
        p.reported = true;
        p.pty = None;
        let exit = p.exit.clone().expect("checked above");
        let waiters = std::mem::take(&mut p.waiters);
        for (conn, id) in waiters {
            self.respond(conn, id, Ok(ResponseBody::Exited(exit.clone())));
        }
        self.broadcast(Event::ProcessExited(exit));
    }
}

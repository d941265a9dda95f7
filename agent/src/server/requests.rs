//! The requests: what each one does to the containers.

use super::streams::plan_io;
use super::*;

impl Server {
    pub(super) fn handle(&mut self, body: RequestBody) -> Reply {
        match body {
            RequestBody::Hello { .. } => Err(err(ErrorKind::BadRequest, "hello was already said")),
            RequestBody::CreateContainer(c) => self.create(c),
            RequestBody::StartContainer { container_id } => self.start(&container_id),
            RequestBody::ExecProcess(e) => self.exec(e),
            RequestBody::SignalProcess {
                container_id,
                exec_id,
                signal,
                all,
            } => self.signal(&container_id, exec_id, signal, all),
            RequestBody::WaitProcess { .. } => Err(failed("handled by the caller")),
            RequestBody::ResizePty {
                container_id,
                exec_id,
                rows,
                cols,
            } => {
                let key = (container_id, exec_id);
                let p = self
                    .procs
                    .get(&key)
                    .ok_or_else(|| err(ErrorKind::NotFound, format!("no {}", proc_name(&key))))?;
                let pty = p.pty.as_ref().ok_or_else(|| {
                    err(
                        ErrorKind::InvalidState,
                        format!("{} has no terminal", proc_name(&key)),
                    )
                })?;
                let size = libc::winsize {
                    ws_row: rows,
                    ws_col: cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                // SAFETY: TIOCSWINSZ reads one winsize.
                if unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
                    return Err(failed(io::Error::last_os_error()));
                }
                Ok(ResponseBody::Done)
            }
            RequestBody::CloseStdin {
                container_id,
                exec_id,
            } => {
                let key = (container_id, exec_id);
                let p = self
                    .procs
                    .get(&key)
                    .ok_or_else(|| err(ErrorKind::NotFound, format!("no {}", proc_name(&key))))?;
                if let Some(stdin) = p.stdin {
                    if let Some(e) = self.relays.get_mut(&stdin) {
                        e.relay.close_src();
                    }
                    self.sync_relay(stdin);
                }
                Ok(ResponseBody::Done)
            }
            RequestBody::PauseContainer { container_id } => {
                self.entry(&container_id)?
                    .container
                    .pause()
                    .map_err(failed)?;
                Ok(ResponseBody::Done)
            }
            RequestBody::ResumeContainer { container_id } => {
                self.entry(&container_id)?
                    .container
                    .resume()
                    .map_err(failed)?;
                Ok(ResponseBody::Done)
            }
            RequestBody::Stats { container_id } => {
                let c = self.entry(&container_id)?;
                let stats: ContainerStats = cgroup::stats(&c.container.cgroup);
                Ok(ResponseBody::Stats(stats))
            }
            RequestBody::UpdateResources {
                container_id,
                resources,
            } => {
                let c = self.entry(&container_id)?;
                cgroup::update(&c.container.cgroup, &resources)
                    .map_err(|e| failed(crate::chain(&e)))?;
                Ok(ResponseBody::Done)
            }
            RequestBody::RemoveContainer { container_id } => self.remove(&container_id),
            RequestBody::SetupNetwork(config) => {
                net::validate(&config).map_err(|e| err(ErrorKind::BadRequest, e.to_string()))?;
                net::setup(&config).map_err(|e| failed(crate::chain(&e)))?;
                Ok(ResponseBody::Done)
            }
            RequestBody::SetTime { unix_secs, nanos } => {
                sys::set_time(unix_secs, nanos)
                    .map_err(|e| failed(format!("set the clock: {e}")))?;
                Ok(ResponseBody::Done)
            }
            RequestBody::AddEntropy { bytes } => {
                sys::add_entropy(&bytes).map_err(|e| failed(format!("add entropy: {e}")))?;
                Ok(ResponseBody::Done)
            }
            RequestBody::SetIdentity {
                hostname,
                machine_id,
            } => {
                sys::set_identity(&hostname, &machine_id)
                    .map_err(|e| err(ErrorKind::BadRequest, format!("set the identity: {e}")))?;
                Ok(ResponseBody::Done)
            }
            RequestBody::Shutdown => {
                let ids: Vec<String> = self.containers.keys().cloned().collect();
                for id in ids {
                    let _ = self.remove(&id);
                }
                self.shutdown = true;
                Ok(ResponseBody::Done)
            }
        }
    }

    pub(super) fn entry(&mut self, id: &str) -> Result<&mut ContainerEntry, ErrorReply> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no container {id}")))
    }

    pub(super) fn create(&mut self, c: CreateContainer) -> Reply {
        container::validate_id(&c.container_id)
            .map_err(|e| err(ErrorKind::BadRequest, e.to_string()))?;
        if self.containers.contains_key(&c.container_id) {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!("container {} exists", c.container_id),
            ));
        }
        let dir = PathBuf::from(CONTAINERS_DIR).join(&c.container_id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| failed(format!("create {}: {e}", dir.display())))?;
        let result = self.create_in(&c, &dir);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    pub(super) fn create_in(&mut self, c: &CreateContainer, dir: &std::path::Path) -> Reply {
        let terminal = c
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        self.shared
            .prepare_for(&c.spec)
            .map_err(|e| err(ErrorKind::BadRequest, crate::chain(&e)))?;
        self.pod
            .prepare_for(&c.spec)
            .map_err(|e| failed(crate::chain(&e)))?;
        let sandbox_spec = if c.pod_sandbox {
            let pause = self
                .pod
                .pause_binary()
                .map_err(|e| failed(crate::chain(&e)))?;
            let spec = pod::sandbox_spec(&c.spec, c.rootfs.layers.len(), &pause)
                .map_err(|e| err(ErrorKind::BadRequest, crate::chain(&e)))?;
            Some(spec)
        } else {
            None
        };
        let assembled = if c.pod_sandbox {
            self.layers.empty_root(dir)
        } else {
            self.layers.assemble(&c.rootfs, dir)
        }
        .map_err(|e| err(ErrorKind::BadRequest, crate::chain(&e)))?;
        let (io, kept) = match plan_io(c.stdio, terminal) {
            Ok(p) => p,
            Err(e) => {
                self.layers.release(assembled);
                return Err(failed(format!("stdio: {e}")));
            }
        };
        let rootfs = assembled.rootfs.clone();
        let spec = sandbox_spec.as_ref().unwrap_or(&c.spec);
        let spec = match personalize(spec, &assembled, c.user.as_deref()) {
            Ok(spec) => spec,
            Err(e) => {
                self.layers.release(assembled);
                return Err(err(ErrorKind::BadRequest, e));
            }
        };
        let (container, pid) = match Container::create(&c.container_id, spec, dir, &rootfs, io) {
            Ok(x) => x,
            Err(e) => {
                self.layers.release(assembled);
                return Err(failed(crate::chain(&e)));
            }
        };
        let oom_kills = cgroup::oom_kills(&container.cgroup);
        self.containers.insert(
            c.container_id.clone(),
            ContainerEntry {
                container,
                rootfs: Some(assembled),
                oom_kills,
                started: false,
            },
        );
        let key = (c.container_id.clone(), None);
        if let Err(e) = self.add_proc(&key, pid.as_raw(), kept) {
            let _ = self.remove(&c.container_id);
            return Err(failed(format!("stdio: {e}")));
        }
        Ok(ResponseBody::Pid(pid.as_raw()))
    }

    pub(super) fn start(&mut self, id: &str) -> Reply {
        let entry = self.entry(id)?;
        if entry.started {
            return Err(err(
                ErrorKind::InvalidState,
                format!("container {id} was already started"),
            ));
        }
        entry.container.start().map_err(failed)?;
        entry.started = true;
        let pid = self
            .procs
            .get(&(id.to_string(), None))
            .map(|p| p.pid)
            .unwrap_or(0);
        Ok(ResponseBody::Pid(pid))
    }

    pub(super) fn exec(&mut self, e: ExecProcess) -> Reply {
        let key = (e.container_id.clone(), Some(e.exec_id.clone()));
        container::validate_id(&e.exec_id)
            .map_err(|x| err(ErrorKind::BadRequest, format!("exec id: {x}")))?;
        if self.procs.get(&key).is_some_and(|p| !p.reported) {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!("{} exists", proc_name(&key)),
            ));
        }
        let entry = self.entry(&e.container_id)?;
        if !entry.started {
            return Err(err(
                ErrorKind::InvalidState,
                format!("container {} is not running", e.container_id),
            ));
        }
        let terminal = e.process.terminal().unwrap_or(false);
        let (io, kept) = plan_io(e.stdio, terminal).map_err(|x| failed(format!("stdio: {x}")))?;
        let entry = self.entry(&e.container_id)?;
        let pid = entry
            .container
            .exec(&e.exec_id, &e.process, io)
            .map_err(failed)?;
        self.procs.remove(&key);
        self.add_proc(&key, pid.as_raw(), kept)
            .map_err(|x| failed(format!("stdio: {x}")))?;
        Ok(ResponseBody::Pid(pid.as_raw()))
    }

    pub(super) fn signal(
        &mut self,
        id: &str,
        exec_id: Option<String>,
        signal: i32,
        all: bool,
    ) -> Reply {
        let entry = self.entry(id)?;
        if all {
            entry.container.kill_all(signal).map_err(failed)?;
            return Ok(ResponseBody::Done);
        }
        let key = (id.to_string(), exec_id);
        let p = self
            .procs
            .get(&key)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no {}", proc_name(&key))))?;
        if p.exit.is_some() {
            return Err(err(
                ErrorKind::InvalidState,
                format!("{} has exited", proc_name(&key)),
            ));
        }
        let sig = nix::sys::signal::Signal::try_from(signal)
            .map_err(|_| err(ErrorKind::BadRequest, format!("{signal} is not a signal")))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig)
            .map_err(|e| failed(format!("kill: {e}")))?;
        Ok(ResponseBody::Done)
    }

    pub(super) fn remove(&mut self, id: &str) -> Reply {
        let mut entry = self
            .containers
            .remove(id)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no container {id}")))?;
        let deleted = entry.container.delete();
        // Its processes are gone or going: drop their records and streams.
        let keys: Vec<ProcKey> = self.procs.keys().filter(|k| k.0 == id).cloned().collect();
        for key in keys {
            if let Some(p) = self.procs.remove(&key) {
                self.pids.remove(&p.pid);
                for relay in [p.stdin, p.stdout, p.stderr].into_iter().flatten() {
                    if let Some(e) = self.relays.remove(&relay) {
                        for fd in [e.relay.src(), e.relay.dst()].into_iter().flatten() {
                            let _ = self.epoll.delete(fd);
                        }
                        self.tokens.remove(&e.src_token);
                        self.tokens.remove(&e.dst_token);
                    }
                }
                for (conn, rid) in p.waiters {
                    self.respond(
                        conn,
                        rid,
                        Err(err(
                            ErrorKind::NotFound,
                            format!("container {id} was removed"),
                        )),
                    );
                }
            }
        }
        if let Some(rootfs) = entry.rootfs.take() {
            self.layers.release(rootfs);
        }
        let _ = std::fs::remove_dir_all(&entry.container.dir);
        deleted.map_err(failed)?;
        Ok(ResponseBody::Done)
    }
}

/// The spec with what only the assembled rootfs can tell: a USER by name.
fn personalize(
    spec: &oci_spec::runtime::Spec,
    assembled: &crate::rootfs::Assembled,
    user: Option<&str>,
) -> Result<oci_spec::runtime::Spec, String> {
    use oci_spec::runtime::UserBuilder;
    let mut spec = spec.clone();
    if let Some(user) = user {
        let resolved = crate::user::resolve(&assembled.rootfs, user).map_err(|e| e.to_string())?;
        let mut process = spec.process().clone().unwrap_or_default();
        let mut builder = UserBuilder::default().uid(resolved.uid).gid(resolved.gid);
        if !resolved.additional_gids.is_empty() {
            builder = builder.additional_gids(resolved.additional_gids);
        }
        process.set_user(builder.build().map_err(|e| format!("user {user}: {e}"))?);
        spec.set_process(Some(process));
    }
    Ok(spec)
}

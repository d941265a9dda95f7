//! Agent benchmark on a real guest (QEMU microvm on TCG with our vhost-user devices):
//! create → running, start, exec latency (medians), and how many guest-kernel-heavy steps
//! (forks, mounts, execs) one container start costs, since each costs far more under this
//! host's emulation than on hardware. Prints a table, writes results/agent.csv and
//! results/agent.png.
//!
//!   cargo run --release -p vmpod-agent --example bench_agent [-- RUNS]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{read_all, AgentVm};
use std::io::Write;
use std::time::Instant;
use vmpod_protocol::{
    Client, CreateContainer, ExecProcess, RequestBody, Rootfs, StdStream, StdioWiring, Upper,
};

type AgentClient = Client<std::os::unix::net::UnixStream>;

fn spec(args: &[&str]) -> oci_spec::runtime::Spec {
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec.process().clone().expect("default process");
    process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    spec.set_process(Some(process));
    spec
}

fn create(client: &mut AgentClient, id: &str, args: &[&str], stdout: bool) {
    client
        .call(RequestBody::CreateContainer(CreateContainer::new(
            id,
            spec(args),
            Rootfs {
                layers: vec!["busybox".into()],
                upper: Upper::Tmpfs,
            },
            StdioWiring {
                stdin: false,
                stdout,
                stderr: false,
            },
        )))
        .expect("create");
}

fn exec(
    vm: &AgentVm,
    client: &mut AgentClient,
    id: &str,
    script: &str,
    stdout: bool,
) -> (f64, f64, String) {
    let process = spec(&["sh", "-c", script])
        .process()
        .clone()
        .expect("process");
    let t0 = Instant::now();
    client
        .call(RequestBody::ExecProcess(ExecProcess {
            container_id: "helper".into(),
            exec_id: id.into(),
            process: Box::new(process),
            stdio: StdioWiring {
                stdin: false,
                stdout,
                stderr: false,
            },
        }))
        .expect("exec");
    let running = t0.elapsed().as_secs_f64();
    let out = if stdout {
        String::from_utf8_lossy(&read_all(vm.stream("helper", Some(id), StdStream::Stdout)))
            .into_owned()
    } else {
        String::new()
    };
    client.wait("helper", Some(id)).expect("wait");
    (running, t0.elapsed().as_secs_f64(), out)
}

fn forks_so_far(vm: &AgentVm, client: &mut AgentClient, n: usize) -> u64 {
    let (_, _, out) = exec(
        vm,
        client,
        &format!("stat{n}"),
        "grep '^processes' /proc/stat",
        true,
    );
    out.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(15);
    let vm = AgentVm::boot("bench-agent", &[]);
    let mut client = vm.client();
    create(&mut client, "helper", &["sleep", "100000"], false);
    client
        .call(RequestBody::StartContainer {
            container_id: "helper".into(),
        })
        .expect("start helper");

    // What one stat exec itself costs in forks, to take it out of the figures below.
    let a = forks_so_far(&vm, &mut client, 1_000_000);
    let per_exec = forks_so_far(&vm, &mut client, 1_000_001) - a;
    let (mut created, mut started, mut execs_running, mut execs_done) =
        (vec![], vec![], vec![], vec![]);
    let mut forks = vec![];
    let mut mounts = 0;
    for i in 0..runs {
        let id = format!("c{i}");
        let before = forks_so_far(&vm, &mut client, 2 * i);
        let t0 = Instant::now();
        create(
            &mut client,
            &id,
            &["sh", "-c", "wc -l < /proc/self/mountinfo"],
            true,
        );
        created.push(t0.elapsed().as_secs_f64());
        let stdout = vm.stream(&id, None, StdStream::Stdout);
        let t1 = Instant::now();
        client
            .call(RequestBody::StartContainer {
                container_id: id.clone(),
            })
            .expect("start");
        started.push(t1.elapsed().as_secs_f64());
        let out = String::from_utf8_lossy(&read_all(stdout)).into_owned();
        client.wait(&id, None).expect("wait");
        mounts = out.trim().parse::<u32>().unwrap_or(0);
        // The container's shell forks none for `wc <`: what remains is the runtime's.
        forks.push((forks_so_far(&vm, &mut client, 2 * i + 1) - before - per_exec) as f64);
        client
            .call_done(RequestBody::RemoveContainer { container_id: id })
            .expect("remove");
        let (running, done, _) = exec(&vm, &mut client, &format!("e{i}"), "true", false);
        execs_running.push(running);
        execs_done.push(done);
    }
    let ms = |v: &Vec<f64>| median(v.clone()) * 1e3;
    let rows = [
        ("create (rootfs mounted, init waiting)", ms(&created)),
        ("start (process running)", ms(&started)),
        (
            "create + start",
            ms(&created.iter().zip(&started).map(|(a, b)| a + b).collect()),
        ),
        ("exec: request -> process running", ms(&execs_running)),
        ("exec: request -> `true` exited", ms(&execs_done)),
    ];
    println!(
        "\n{:44} {:>10}   (medians of {runs}, QEMU TCG guest)",
        "agent step", "ms"
    );
    for (name, v) in &rows {
        println!("{name:44} {v:10.1}");
    }
    println!(
        "guest-kernel-heavy steps per container start: {} forks/clones, {} mounts in the container + 3 for its rootfs (layer, scratch tmpfs, overlay), 1 exec; per exec: {per_exec} forks/clones, 1 exec",
        median(forks.clone()),
        mounts
    );
    let out = common::support::repo_root().join("results");
    std::fs::create_dir_all(&out).expect("create results/");
    let mut csv = String::from("step,ms\n");
    for (name, v) in &rows {
        csv += &format!("\"{name}\",{v:.2}\n");
    }
    std::fs::write(out.join("agent.csv"), &csv).expect("write agent.csv");
    let data = out.join("agent.dat");
    let mut dat = String::new();
    for (name, v) in &rows {
        dat += &format!("\"{}\" {v:.2}\n", name.split(" (").next().unwrap_or(name));
    }
    std::fs::write(&data, dat).expect("write agent.dat");
    let script = format!(
        "set terminal pngcairo size 900,450\nset output '{}'\nset title 'vmpod-agent latencies (medians, QEMU TCG)'\nset style data histogram\nset style fill solid 0.8\nset ylabel 'ms'\nset xtics rotate by -20 font ',8'\nplot '{}' using 2:xtic(1) notitle\n",
        out.join("agent.png").display(),
        data.display()
    );
    let mut gnuplot = std::process::Command::new("gnuplot")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run gnuplot");
    gnuplot
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("feed gnuplot");
    gnuplot.wait().expect("gnuplot");
    println!(
        "csv: {}, plot: {}",
        out.join("agent.csv").display(),
        out.join("agent.png").display()
    );
    vm.shutdown(&mut client);
}

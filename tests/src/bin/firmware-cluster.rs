//! Runs a firmware cluster: one QEMU VM per replica of a board file, all sharing one ivshmem
//! window; lets them replicate, takes the leader out, checks that a new leader continues past
//! two laps of the log, restarts the replica taken out (a new VM over its zeroed part of the
//! window), checks that it rejoins by state transfer and that all the replicas agree, and
//! prints what happened. Exit code 0 only if every check passed.
//!
//! ```text
//! firmware-cluster --board-file FILE --image ELF [--qemu scripts/qemu-arm] [--out DIR]
//!                  [--defmt-print PATH] [--kill-after N] [--continue-for N] [--timeout S]
//!                  [--fault kill|panic]
//! ```
//!
//! `--fault kill` (the default) SIGKILLs the leader's VM; `--fault panic` makes the leader's
//! firmware panic through the control block, so its fail-safe must stop it (the VM must exit
//! with the panic code and the replica report itself failed) for the others to fail over.
//!
//! The restarted replica's log positions were recycled long ago, so it must install a snapshot
//! of a survivor's setpoint table (`runtime_embedded::setpoints`), be admitted as a voter, and
//! then follow the log with the others. A replica whose replication plane halts (telemetry flag
//! and reason) fails the run at once: none may halt silently.
//!
//! The harness watches the replicas through the window itself (a file under /dev/shm that QEMU
//! maps as the ivshmem BAR): each replica publishes its telemetry there and the harness writes
//! the control words (`runtime_embedded::telemetry`). Each VM's console (defmt frames through
//! semihosting) goes to `OUT/replica-N.defmt` and is decoded with `defmt-print` at the end.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use runtime_embedded::telemetry::{self, control, word};
use runtime_embedded::window::WindowLayout;

/// Laps of the log the survivors apply past the replica taken out before it restarts: none of
/// the positions it lacks is still in a log.
const RESTART_AFTER_LAPS: u64 = 2;

struct Args {
    board_file: PathBuf,
    image: PathBuf,
    qemu: PathBuf,
    out: PathBuf,
    defmt_print: Option<PathBuf>,
    kill_after: u64,
    continue_for: u64,
    timeout: Duration,
    fault: Fault,
}

/// How the leader is taken out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// SIGKILL of its VM.
    Kill,
    /// A panic inside its firmware (the fail-safe path).
    Panic,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        board_file: PathBuf::new(),
        image: PathBuf::new(),
        qemu: PathBuf::from("scripts/qemu-arm"),
        out: PathBuf::from("target/firmware/cluster"),
        defmt_print: None,
        kill_after: 300,
        continue_for: 300,
        timeout: Duration::from_secs(240),
        fault: Fault::Kill,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--board-file" => args.board_file = value()?.into(),
            "--image" => args.image = value()?.into(),
            "--qemu" => args.qemu = value()?.into(),
            "--out" => args.out = value()?.into(),
            "--defmt-print" => args.defmt_print = Some(value()?.into()),
            "--kill-after" => args.kill_after = number(&flag, &value()?)?,
            "--continue-for" => args.continue_for = number(&flag, &value()?)?,
            "--timeout" => args.timeout = Duration::from_secs(number(&flag, &value()?)?),
            "--fault" => {
                args.fault = match value()?.as_str() {
                    "kill" => Fault::Kill,
                    "panic" => Fault::Panic,
                    other => return Err(format!("--fault: kill or panic, not {other}")),
                }
            }
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if args.board_file.as_os_str().is_empty() || args.image.as_os_str().is_empty() {
        return Err("--board-file and --image are required".into());
    }
    Ok(args)
}

fn number(flag: &str, text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{flag}: not a whole number: {text}"))
}

/// What one replica published in the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    phase: u32,
    loops: u32,
    leader: Option<u8>,
    leading: bool,
    voter: bool,
    catching_up: bool,
    /// Why its replication plane halted; 0 while it runs.
    halted: u32,
    applied: u64,
    chain: u64,
    digest: u64,
    committed: u64,
    leader_changes: u32,
    code: u32,
    installs: u32,
    installed_position: u64,
    installed_bytes: u64,
    donations: u32,
    /// Peers it failed on a notice of their end.
    deaths: u32,
}

/// The window file and its layout.
struct Window {
    file: File,
    layout: WindowLayout,
    path: PathBuf,
}

impl Window {
    fn create(path: PathBuf, layout: WindowLayout, size: u64) -> Result<Window, String> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| format!("create {}: {e}", path.display()))?;
        file.set_len(size)
            .map_err(|e| format!("size {}: {e}", path.display()))?;
        Ok(Window { file, layout, path })
    }

    fn words(&self, offset: u32) -> [u32; telemetry::WORDS] {
        let mut bytes = [0u8; telemetry::WORDS * 4];
        // A short read leaves zeros: reported as a replica that has not booted.
        let _ = self.file.read_at(&mut bytes, u64::from(offset));
        std::array::from_fn(|i| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()))
    }

    /// Replica `id`'s telemetry, read until two reads agree (64-bit values are two words).
    fn seen(&self, id: u8) -> Option<Seen> {
        let offset = self.layout.telemetry(id);
        let mut words = self.words(offset);
        for _ in 0..100 {
            let again = self.words(offset);
            if again == words {
                break;
            }
            words = again;
        }
        let wide = |i: usize| u64::from(words[i]) | (u64::from(words[i + 1]) << 32);
        let flag = |f: u32| words[word::FLAGS] & f != 0;
        (words[word::MAGIC] == telemetry::MAGIC).then(|| Seen {
            phase: words[word::PHASE],
            loops: words[word::LOOPS],
            leader: words[word::LEADER].checked_sub(1).map(|l| l as u8),
            leading: flag(telemetry::FLAG_LEADING),
            voter: flag(telemetry::FLAG_VOTER),
            catching_up: flag(telemetry::FLAG_CATCHING_UP),
            // A halt with its reason lost still shows.
            halted: if flag(telemetry::FLAG_HALTED) {
                words[word::HALT].max(1)
            } else {
                0
            },
            applied: wide(word::APPLIED),
            chain: wide(word::CHAIN),
            digest: wide(word::DIGEST),
            committed: wide(word::COMMITTED),
            leader_changes: words[word::LEADER_CHANGES],
            code: words[word::CODE],
            installs: words[word::INSTALLS],
            installed_position: wide(word::INSTALLED_POSITION),
            installed_bytes: wide(word::INSTALLED_BYTES),
            donations: words[word::DONATIONS],
            deaths: words[word::DEATHS],
        })
    }

    /// Zeroes what replica `id`'s life left in the window (its VM must not run).
    fn zero_parts_of(&self, id: u8) -> Result<(), String> {
        for (offset, len) in self.layout.parts_of(id) {
            self.file
                .write_all_at(&vec![0u8; len as usize], u64::from(offset))
                .map_err(|e| format!("zero {len} bytes at {offset:#x} of the window: {e}"))?;
        }
        Ok(())
    }

    fn control(&self, index: usize, value: u32) -> Result<(), String> {
        self.file
            .write_at(&value.to_le_bytes(), 4 * index as u64)
            .map(|_| ())
            .map_err(|e| format!("write control word {index}: {e}"))
    }
}

/// The cluster of VMs.
struct Cluster {
    args: Args,
    window: Window,
    window_size: u64,
    slot_count: u64,
    vms: Vec<Option<Child>>,
    /// Per replica, the VMs started for it so far (lives).
    lives: Vec<u32>,
    started: Instant,
}

/// How a restarted replica came back.
struct Rejoin {
    booted: Duration,
    installed: Duration,
    admitted: Duration,
    seen: Seen,
    donors: Vec<u8>,
}

impl Cluster {
    fn start(args: Args) -> Result<Cluster, String> {
        let deployment = board_configs::load(&args.board_file).map_err(|e| e.to_string())?;
        let config = deployment.cluster.config;
        let layout = WindowLayout::new(&config).map_err(|e| e.to_string())?;
        let size = match &deployment.replicas[0].host {
            board_configs::Host::Firmware(f) => f.window_size,
            board_configs::Host::Linux(_) => return Err("not a firmware board file".into()),
        };
        std::fs::create_dir_all(&args.out)
            .map_err(|e| format!("create {}: {e}", args.out.display()))?;
        let name = format!("mu-firmware-{}", std::process::id());
        let window = Window::create(PathBuf::from("/dev/shm").join(name), layout, size)?;
        let mut cluster = Cluster {
            args,
            window,
            window_size: size,
            slot_count: u64::from(config.slot_count),
            vms: Vec::new(),
            lives: vec![0; config.replica_count as usize],
            started: Instant::now(),
        };
        for id in 0..config.replica_count {
            let vm = cluster.spawn(id)?;
            cluster.vms.push(Some(vm));
        }
        println!(
            "firmware cluster: {} replicas of {}, one QEMU virt Cortex-A53 VM each, window {} \
             ({size} bytes, {} needed)",
            config.replica_count,
            deployment.cluster.name,
            cluster.window.path.display(),
            layout.bytes
        );
        println!(
            "window: {} regions of {} bytes, each with a log of {} slots x {} bytes = {} bytes",
            config.replica_count,
            layout.region.region_bytes,
            config.slot_count,
            config.slot_size,
            layout.region.log_bytes()
        );
        Ok(cluster)
    }

    /// Starts a new life of replica `id`: a VM over the window.
    fn spawn(&mut self, id: u8) -> Result<Child, String> {
        self.lives[id as usize] += 1;
        let life = self.lives[id as usize];
        // Before it boots: the firmware numbers this life from the word (and refuses to boot
        // into a life marked ended).
        self.window.control(telemetry::life_word(id), life)?;
        let console = File::create(self.console(id, life)).map_err(|e| e.to_string())?;
        let errors = File::create(self.console(id, life).with_extension("stderr"))
            .map_err(|e| e.to_string())?;
        let size = self.window_size;
        let window = self.window.path.display();
        Command::new(&self.args.qemu)
            .arg("qemu-system-aarch64")
            .args(["-M", "virt,highmem=off", "-cpu", "cortex-a53", "-m", "128M"])
            // maxcpus=2: QEMU 7.2 makes a guest's exclusive loads and stores atomic against other
            // processes (the other VMs) only when the machine may have more than one CPU.
            .args(["-smp", "1,maxcpus=2"])
            .args([
                "-nodefaults",
                "-display",
                "none",
                "-monitor",
                "none",
                "-serial",
                "none",
            ])
            .arg("-semihosting-config")
            .arg(format!("enable=on,target=native,arg=mu,arg={id}"))
            .arg("-object")
            .arg(format!(
                "memory-backend-file,id=window,size={size},share=on,mem-path={window}"
            ))
            .args(["-device", "ivshmem-plain,memdev=window"])
            .arg("-kernel")
            .arg(&self.args.image)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(errors)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.args.qemu.display()))
    }

    /// The console of life `life` (from 1) of replica `id`.
    fn console(&self, id: u8, life: u32) -> PathBuf {
        let name = match life {
            1 => format!("replica-{id}.defmt"),
            _ => format!("replica-{id}-life-{life}.defmt"),
        };
        self.args.out.join(name)
    }

    fn ids(&self) -> impl Iterator<Item = u8> {
        0..self.vms.len() as u8
    }

    fn live(&self) -> Vec<u8> {
        self.ids()
            .filter(|&id| self.vms[id as usize].is_some())
            .collect()
    }

    fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Fails if a VM that should run has exited or a replica reports failure.
    fn check_health(&mut self) -> Result<(), String> {
        for id in self.live() {
            if let Some(seen) = self.window.seen(id) {
                if seen.phase == telemetry::PHASE_FAILED {
                    return Err(format!("replica {id} failed (code {})", seen.code));
                }
                if seen.halted != 0 {
                    return Err(format!(
                        "replica {id} HALTED its replication plane at position {}: reason {} \
                         ({}); it no longer applies anything",
                        seen.applied,
                        seen.halted,
                        halt_reason(seen.halted)
                    ));
                }
            }
            let vm = self.vms[id as usize].as_mut().expect("live");
            if let Ok(Some(status)) = vm.try_wait() {
                return Err(format!("replica {id}'s VM exited early: {status}"));
            }
        }
        Ok(())
    }

    /// Polls until `done` gives a value; fails on timeout or ill health.
    fn wait_for<T>(
        &mut self,
        what: &str,
        mut done: impl FnMut(&Cluster) -> Option<T>,
    ) -> Result<T, String> {
        let mut last_line = Instant::now();
        loop {
            self.check_health()?;
            if let Some(value) = done(self) {
                return Ok(value);
            }
            if self.started.elapsed() > self.args.timeout {
                return Err(format!("timed out waiting for {what}; {}", self.describe()));
            }
            if last_line.elapsed() > Duration::from_secs(2) {
                println!("[{:6.1} s] {}", self.seconds(), self.describe());
                last_line = Instant::now();
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .live()
            .into_iter()
            .map(|id| match self.window.seen(id) {
                None => format!("replica {id}: booting"),
                Some(s) => format!(
                    "replica {id}: leader {:?}{}{}{} applied {} committed {}",
                    s.leader,
                    if s.leading { " (leading)" } else { "" },
                    if s.voter { "" } else { " (recovering)" },
                    if s.catching_up {
                        " (installing a snapshot)"
                    } else {
                        ""
                    },
                    s.applied,
                    s.committed
                ),
            })
            .collect();
        parts.join("; ")
    }

    /// The replica leading on the fast path whom every live replica follows.
    fn leader(&self) -> Option<(u8, Seen)> {
        let live = self.live();
        let seen: Vec<Seen> = live
            .iter()
            .map(|&id| self.window.seen(id))
            .collect::<Option<_>>()?;
        let leader = seen[0].leader?;
        let index = live.iter().position(|&id| id == leader)?;
        let agreed = seen.iter().all(|s| s.leader == Some(leader));
        (agreed && seen[index].leading).then_some((leader, seen[index]))
    }

    /// Starts a new life of replica `id` (its VM is gone) over its zeroed part of the window,
    /// and waits until it installed a snapshot and a leader admitted it as a voter.
    fn restart(&mut self, id: u8) -> Result<Rejoin, String> {
        assert!(self.vms[id as usize].is_none(), "replica {id}'s VM is gone");
        let others = self.live();
        let donated = |c: &Cluster| -> Vec<u32> {
            let seen = |&o: &u8| c.window.seen(o).map_or(0, |s| s.donations);
            others.iter().map(seen).collect()
        };
        let before = donated(self);
        self.window.zero_parts_of(id)?;
        let started = Instant::now();
        let vm = self.spawn(id)?;
        self.vms[id as usize] = Some(vm);
        let phase = |c: &Cluster| {
            c.window
                .seen(id)
                .filter(|s| s.phase == telemetry::PHASE_RUNNING)
        };
        self.wait_for(&format!("replica {id}'s new life to boot"), phase)?;
        let booted = started.elapsed();
        let installed = |c: &Cluster| c.window.seen(id).filter(|s| s.installs >= 1);
        self.wait_for(&format!("replica {id} to install a snapshot"), installed)?;
        let installed = started.elapsed();
        let voter = |c: &Cluster| c.window.seen(id).filter(|s| s.voter);
        let seen = self.wait_for(&format!("replica {id} to be admitted as a voter"), voter)?;
        let admitted = started.elapsed();
        // A donor's telemetry may lag (its VM waits for a host core): wait for it.
        let donors = self.wait_for("a survivor to report its donation", |c| {
            let after = donated(c);
            let donors: Vec<u8> = others
                .iter()
                .zip(before.iter().zip(&after))
                .filter(|(_, (b, a))| a > b)
                .map(|(&o, _)| o)
                .collect();
            (!donors.is_empty()).then_some(donors)
        })?;
        Ok(Rejoin {
            booted,
            installed,
            admitted,
            seen,
            donors,
        })
    }

    /// Tells the peers that replica `id`'s life certainly ended: its VM exited (reaped), so
    /// nothing of that life can run any more. They fail it at once instead of waiting for its
    /// pull score to drain.
    fn mark_ended(&self, id: u8) -> Result<(), String> {
        let life = self.lives[id as usize];
        self.window
            .control(telemetry::life_word(id), life | telemetry::LIFE_ENDED)
    }

    /// Takes replica `id` out the way `--fault` says.
    fn take_out(&mut self, id: u8) -> Result<(), String> {
        let mut vm = self.vms[id as usize].take().ok_or("already dead")?;
        if self.args.fault == Fault::Kill {
            vm.kill().map_err(|e| format!("kill replica {id}: {e}"))?;
            vm.wait().map_err(|e| e.to_string())?;
            return self.mark_ended(id);
        }
        self.window.control(control::PANIC, u32::from(id) + 1)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = vm.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = vm.kill();
                return Err(format!(
                    "replica {id} was told to panic but its VM kept running"
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        // Done: a later life of the replica must not panic on the same word.
        self.window.control(control::PANIC, 0)?;
        self.mark_ended(id)?;
        let code = runtime_embedded::ExitCode::Panic as i32;
        let seen = self.window.seen(id);
        let failed =
            seen.is_some_and(|s| s.phase == telemetry::PHASE_FAILED && s.code == code as u32);
        if status.code() != Some(code) || !failed {
            return Err(format!(
                "replica {id}'s fail-safe: VM exit {status} (want {code}), telemetry {seen:?}"
            ));
        }
        println!(
            "fail-safe: replica {id} panicked, reported itself failed and its VM exited {code}"
        );
        Ok(())
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("firmware-cluster: {e}");
            return ExitCode::from(2);
        }
    };
    let mut cluster = match Cluster::start(args) {
        Ok(cluster) => cluster,
        Err(e) => {
            eprintln!("firmware-cluster: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = scenario(&mut cluster);
    let code = finish(&mut cluster, outcome.is_ok());
    let _ = std::fs::remove_file(&cluster.window.path);
    match (outcome, code) {
        (Ok(()), Ok(())) => {
            println!("firmware cluster: PASSED");
            ExitCode::SUCCESS
        }
        (Err(e), _) | (Ok(()), Err(e)) => {
            eprintln!("firmware cluster: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The run: replicate, take the leader out, continue under a new one past two laps of the log,
/// restart the one taken out, continue with all of them, drain, agree.
fn scenario(cluster: &mut Cluster) -> Result<(), String> {
    // The workload starts once every replica runs, so that none starts a whole log behind.
    let ids: Vec<u8> = cluster.ids().collect();
    cluster.wait_for("every replica to boot", |c| {
        ids.iter()
            .all(|&id| {
                c.window
                    .seen(id)
                    .is_some_and(|s| s.phase == telemetry::PHASE_RUNNING)
            })
            .then_some(())
    })?;
    cluster.window.control(control::START, 1)?;
    let kill_after = cluster.args.kill_after;
    let (old, seen) = cluster.wait_for("a leader", |c| {
        c.leader().filter(|(_, s)| s.committed >= kill_after)
    })?;
    let how = match cluster.args.fault {
        Fault::Kill => "killing its VM (SIGKILL)",
        Fault::Panic => "making its firmware panic",
    };
    println!(
        "[{:6.1} s] leader: replica {old}, {} commands committed; {how}",
        cluster.seconds(),
        seen.committed
    );
    let killed = Instant::now();
    cluster.take_out(old)?;
    let (new, _) = cluster.wait_for("a new leader's first commit", |c| {
        c.leader().filter(|(id, s)| *id != old && s.committed >= 1)
    })?;
    let fail_over = killed.elapsed();
    println!(
        "[{:6.1} s] fail-over: replica {new} committed its first command {:.1} ms after the fault",
        cluster.seconds(),
        fail_over.as_secs_f64() * 1e3
    );
    // The harness marked the life ended once its VM was reaped: every survivor must have
    // failed it on that notice, not only by its pull score.
    let survivors = cluster.live();
    let deaths = cluster.wait_for("every survivor to take the notice of its end", |c| {
        let deaths: Vec<u32> = survivors
            .iter()
            .map(|&id| c.window.seen(id).map_or(0, |s| s.deaths))
            .collect();
        deaths.iter().all(|&d| d >= 1).then_some(deaths)
    })?;
    println!(
        "[{:6.1} s] death notice: replicas {survivors:?} failed replica {old} on the harness's \
         notice that its life {} ended (deaths taken: {deaths:?})",
        cluster.seconds(),
        cluster.lives[old as usize]
    );
    // The life taken out is over: what it published last stands.
    let last = cluster.window.seen(old);
    let (stopped_at, committed_old) = last.map_or((0, 0), |s| (s.applied, s.committed));
    let more = cluster.args.continue_for;
    let past = RESTART_AFTER_LAPS * cluster.slot_count;
    let laps = format!("the new leader to continue {RESTART_AFTER_LAPS} laps past it");
    let (_, seen) = cluster.wait_for(&laps, |c| {
        c.leader()
            .filter(|(id, s)| *id == new && s.committed >= more && s.applied >= stopped_at + past)
    })?;
    println!(
        "[{:6.1} s] new leader: replica {new}, {} commands committed, {} positions applied: \
         {:.1} laps of the {}-slot log past replica {old}'s {stopped_at}",
        cluster.seconds(),
        seen.committed,
        seen.applied,
        (seen.applied - stopped_at) as f64 / cluster.slot_count as f64,
        cluster.slot_count
    );
    println!(
        "[{:6.1} s] restarting replica {old}: a new VM over its zeroed part of the window, the \
         workload still running",
        cluster.seconds()
    );
    let rejoin = cluster.restart(old)?;
    report_rejoin(cluster, old, &rejoin);
    // It follows the log from the snapshot on, with the others (it may lead again: the lowest
    // id among the voters leads).
    let applied = |c: &Cluster| -> Vec<u64> {
        let seen = |&id: &u8| c.window.seen(id).map_or(0, |s| s.applied);
        c.live().iter().map(seen).collect()
    };
    let target = applied(cluster).into_iter().max().unwrap_or(0) + more;
    let leader = cluster.wait_for("every replica to apply more of the log", |c| {
        let (leader, _) = c.leader()?;
        applied(c).iter().all(|&a| a >= target).then_some(leader)
    })?;
    println!(
        "[{:6.1} s] leader: replica {leader}; every replica applied {target} positions; stopping \
         the workload",
        cluster.seconds()
    );
    cluster.window.control(control::STOP, 1)?;
    agree(cluster, old, new, committed_old)
}

/// Prints how the restarted replica came back.
fn report_rejoin(cluster: &Cluster, id: u8, rejoin: &Rejoin) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let s = &rejoin.seen;
    println!(
        "[{:6.1} s] rejoin: replica {id}'s new life booted {:.1} ms after its VM started, \
         installed {} snapshot(s), {} bytes from replica(s) {:?}, covering positions below {} \
         (not replayed: no log holds them), {:.1} ms after the start; admitted as a voter \
         {:.1} ms after the start",
        cluster.seconds(),
        ms(rejoin.booted),
        s.installs,
        s.installed_bytes,
        rejoin.donors,
        s.installed_position,
        ms(rejoin.installed),
        ms(rejoin.admitted)
    );
}

/// Waits until every replica holds the same log prefix for a while, then compares their state;
/// `committed_old` commands were committed by the first life of `old`.
fn agree(cluster: &mut Cluster, old: u8, new: u8, committed_old: u64) -> Result<(), String> {
    // The common log prefix (applied, chain) and since when it has not moved.
    let mut stable: Option<(Instant, (u64, u64))> = None;
    let seen = cluster.wait_for("the replicas to converge", |c| {
        let live = c.live();
        let seen: Vec<Seen> = live.iter().filter_map(|&id| c.window.seen(id)).collect();
        let prefix = seen.first().map(|s| (s.applied, s.chain)).filter(|&p| {
            seen.len() == live.len() && seen.iter().all(|s| (s.applied, s.chain) == p)
        });
        match (prefix, stable) {
            (Some(p), Some((at, q))) if p == q => {
                (at.elapsed() > Duration::from_millis(500)).then_some(seen)
            }
            _ => {
                stable = prefix.map(|p| (Instant::now(), p));
                None
            }
        }
    })?;
    let live = cluster.live();
    if live.len() != cluster.vms.len() {
        return Err(format!("only replicas {live:?} run at the end"));
    }
    let committed = committed_old + seen.iter().map(|s| s.committed).sum::<u64>();
    let digests: Vec<u64> = seen.iter().map(|s| s.digest).collect();
    if digests.iter().any(|&d| d != digests[0]) {
        return Err(format!(
            "the replicas applied the same log but their states differ: {digests:x?}"
        ));
    }
    if seen[0].applied < committed {
        return Err(format!(
            "{committed} commands were reported committed but the replicas applied only {}",
            seen[0].applied
        ));
    }
    let survivors_saw_the_change = live
        .iter()
        .zip(&seen)
        .all(|(&id, s)| id == old || s.leader_changes >= 1);
    if seen
        .iter()
        .any(|s| s.leader.is_none() || s.leader != seen[0].leader)
    {
        return Err(format!("the replicas follow different leaders: {seen:?}"));
    }
    if !survivors_saw_the_change {
        return Err(format!(
            "the survivors did not see the leader change: {seen:?}"
        ));
    }
    if seen.iter().any(|s| !s.voter) {
        return Err(format!("not every replica is a voter at the end: {seen:?}"));
    }
    println!(
        "agreement: replicas {live:?} (replica {old} restarted) hold identical state, digest \
         {:016x} after {} positions; {committed} commands committed (leaders: replica {old}, \
         then {new}, then {}), all applied",
        digests[0],
        seen[0].applied,
        seen[0].leader.unwrap_or(new)
    );
    Ok(())
}

/// Asks the replicas to finish, collects their exit codes and prints their consoles.
fn finish(cluster: &mut Cluster, passed: bool) -> Result<(), String> {
    let _ = cluster.window.control(control::FINISH, 1);
    let mut problems = Vec::new();
    for id in cluster.live() {
        let mut vm = cluster.vms[id as usize].take().expect("live");
        let deadline = Instant::now() + Duration::from_secs(if passed { 30 } else { 2 });
        let status = loop {
            match vm.try_wait() {
                Ok(Some(status)) => break Some(status),
                _ if Instant::now() > deadline => break None,
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        match status {
            Some(s) if s.success() => {}
            Some(s) => problems.push(format!("replica {id}'s VM exited with {s}")),
            None => {
                let _ = vm.kill();
                let _ = vm.wait();
                if passed {
                    problems.push(format!("replica {id}'s VM did not finish"));
                }
            }
        }
    }
    for id in cluster.ids() {
        for life in 1..=cluster.lives[id as usize] {
            print_console(cluster, id, life);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Prints the decoded console of life `life` of replica `id`, if `defmt-print` was given.
fn print_console(cluster: &Cluster, id: u8, life: u32) {
    let Some(decoder) = &cluster.args.defmt_print else {
        return;
    };
    let Ok(raw) = File::open(cluster.console(id, life)) else {
        return;
    };
    println!("--- console of replica {id}, life {life} (defmt, decoded):");
    let decoded = Command::new(decoder)
        .arg("-e")
        .arg(&cluster.args.image)
        .stdin(raw)
        .output();
    match decoded {
        Ok(out) => print!("{}", String::from_utf8_lossy(&out.stdout)),
        Err(e) => println!("(cannot run {}: {e})", decoder.display()),
    }
}

/// What a halt reason from the core means.
fn halt_reason(code: u32) -> &'static str {
    match mu_nostd::Halt::from_code(code) {
        Some(reason) => reason.describe(),
        None => "a reason this harness does not know",
    }
}

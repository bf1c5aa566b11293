//! Counting the instructions a program executes, with valgrind's callgrind tool: the
//! program runs under it ([`Tools::wrapper`]), and a [`Counter`] zeroes its count when a
//! measured phase starts and dumps it when the phase ends.
//!
//! An instruction count hardly moves with what else the machine does (the other core's
//! load, the hypervisor's steal, the CPU's clock): two runs of one build agreed within
//! 0.2% here, where timed runs on these shared cores move by ten. What it leaves out:
//! the kernel's work (socket calls, wake-ups), cache misses and stalls, and how long an
//! instruction takes; and callgrind counts each byte a `rep stosb` or `rep movsb`
//! stores as an instruction, so bulk memory work weighs more than its time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a dump may take to be written once asked for.
const DUMP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `callgrind_control` may take to deliver a command: it reaches an idle
/// program through ptrace, and waits for ever where ptrace is refused.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// The script [`Tools::wrapper`] writes in a target's folder.
pub const WRAPPER: &str = "under-callgrind.sh";

/// valgrind and its `callgrind_control`.
#[derive(Debug, Clone)]
pub struct Tools {
    valgrind: PathBuf,
    control: PathBuf,
    /// `valgrind --version`.
    pub version: String,
}

impl Tools {
    /// Finds valgrind, installing it with apt-get when it is missing.
    pub fn find() -> Result<Self> {
        let found = || {
            Some((
                super::find_executable("valgrind")?,
                super::find_executable("callgrind_control")?,
            ))
        };
        let (valgrind, control) = match found() {
            Some(tools) => tools,
            None => {
                super::apt_install("valgrind", &["valgrind"]).map_err(anyhow::Error::msg)?;
                found().context(
                    "valgrind was installed but valgrind or callgrind_control is not on the PATH",
                )?
            }
        };
        let out = Command::new(&valgrind)
            .arg("--version")
            .output()
            .context("running `valgrind --version`")?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(Self {
            valgrind,
            control,
            version,
        })
    }

    /// Writes a script in `dir` that runs `bin` with its arguments under callgrind, its
    /// dumps going to `dir/callgrind.out.N`; the script execs valgrind, so the pid it is
    /// started as is the counted program's. (callgrind_control can zero a count and
    /// dump it, not switch counting on, so the program counts from its start and a
    /// [`Counter`] zeroes that before each phase.)
    pub fn wrapper(&self, dir: &Path, bin: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let script = dir.join(WRAPPER);
        let text = format!(
            "#!/bin/sh\nexec {} -q --tool=callgrind \
             --callgrind-out-file={} {} \"$@\"\n",
            shell_quote(&self.valgrind),
            shell_quote(&dump_base(dir)),
            shell_quote(bin),
        );
        fs::write(&script, text).with_context(|| format!("writing {}", script.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&script, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making {} executable", script.display()))?;
        }
        Ok(script)
    }

    /// A counter for the program started by [`Self::wrapper`] in `dir` as `pid`.
    pub fn counter(&self, dir: &Path, pid: u32) -> Counter {
        Counter {
            control: self.control.clone(),
            pid,
            base: dump_base(dir),
            dumps: AtomicU32::new(0),
        }
    }
}

fn dump_base(dir: &Path) -> PathBuf {
    dir.join("callgrind.out")
}

/// `path` in single quotes for `sh`.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

/// The instruction count of one program running under callgrind.
#[derive(Debug)]
pub struct Counter {
    control: PathBuf,
    pid: u32,
    base: PathBuf,
    /// Dumps asked for so far: callgrind numbers them from 1.
    dumps: AtomicU32,
}

impl Counter {
    /// Starts counting from zero.
    pub fn zero(&self) -> Result<()> {
        self.control("--zero")
    }

    /// The instructions executed since [`Self::zero`] (or since the start).
    pub fn read(&self) -> Result<u64> {
        self.control("--dump")?;
        let n = self.dumps.fetch_add(1, Ordering::Relaxed) + 1;
        let file = PathBuf::from(format!("{}.{n}", self.base.display()));
        let deadline = Instant::now() + DUMP_TIMEOUT;
        loop {
            // The dump ends with its `totals:` line: until then it is being written.
            if let Ok(text) = fs::read_to_string(&file)
                && text.lines().any(|l| l.starts_with("totals:"))
            {
                return instructions_in(&text)
                    .with_context(|| format!("reading {}", file.display()));
            }
            if Instant::now() >= deadline {
                bail!("callgrind did not write {} in time", file.display());
            }
            super::check_interrupted()?;
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends one command (callgrind_control takes one at a time). It says `OK.` whether
    /// or not the command arrived, and says why not on stderr, beside its own progress
    /// lines; so an error there fails the command, and so does a pid it does not know.
    fn control(&self, command: &str) -> Result<()> {
        let mut child = Command::new(&self.control)
            .arg(command)
            .arg(self.pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running callgrind_control")?;
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        while child
            .try_wait()
            .context("waiting for callgrind_control")?
            .is_none()
        {
            if Instant::now() >= deadline || super::interrupted() {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "callgrind_control {command} {} did not finish in {} s (it reaches the program through ptrace, which this machine may refuse)",
                    self.pid,
                    CONTROL_TIMEOUT.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        let out = child
            .wait_with_output()
            .context("reading callgrind_control's output")?;
        let (said, why) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let failed = |text: &str| {
            let text = text.to_ascii_lowercase();
            text.contains("error") || text.contains("cannot") || text.contains("could not")
        };
        if !out.status.success() || !said.contains("OK") || failed(&said) || failed(&why) {
            bail!(
                "callgrind_control {command} {} failed ({}): {} {}",
                self.pid,
                out.status,
                said.trim(),
                why.trim()
            );
        }
        Ok(())
    }
}

/// The instructions (callgrind's only event when it simulates no cache: `Ir`) a dump
/// counts over all threads, from its `summary:` line.
fn instructions_in(dump: &str) -> Result<u64> {
    let events = dump
        .lines()
        .find_map(|l| l.strip_prefix("events:"))
        .context("the dump names no events")?;
    if events.split_whitespace().next() != Some("Ir") {
        bail!("the dump's first event is not Ir: {events}");
    }
    let summary = dump
        .lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .context("the dump has no summary line")?;
    summary
        .split_whitespace()
        .next()
        .context("an empty summary line")?
        .parse()
        .context("the summary is not a count")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_the_summarys_first_event_and_must_be_instructions() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\npid: 7\ncmd: x\npart: 1\n\n\
                    desc: Timerange: Basic block 1 - 2\nevents: Ir\nsummary: 44637961\n\nfn=(1) main\n5 3\n\ntotals: 44637961\n";
        assert_eq!(instructions_in(dump).expect("a count"), 44_637_961);
        let cache = dump.replace("events: Ir", "events: Dr Ir");
        assert!(instructions_in(&cache).is_err());
        assert!(instructions_in("events: Ir\ntotals: 5\n").is_err());
        assert!(instructions_in("events: Ir\nsummary: many\n").is_err());
    }

    #[test]
    fn the_wrapper_quotes_paths_for_sh() {
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}

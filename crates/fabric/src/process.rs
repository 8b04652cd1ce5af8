//! What the kernel says about a process, read from `/proc`.

use std::path::Path;

/// The state of a pid as `/proc/PID/stat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    /// Running or sleeping: alive and scheduled.
    Running,
    /// Stopped by SIGSTOP (or traced): alive, but does not answer.
    Stopped,
    /// Exited but not yet reaped by its parent.
    Zombie,
    /// No such process.
    Gone,
}

impl ProcState {
    /// Whether the process still holds its sockets and files.
    pub fn is_alive(self) -> bool {
        matches!(self, ProcState::Running | ProcState::Stopped)
    }
}

/// Reads the state letter of `/proc/PID/stat` (the field after the parenthesised command name).
pub fn proc_state(pid: u32) -> ProcState {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return ProcState::Gone;
    };
    let Some((_, after_comm)) = stat.rsplit_once(')') else {
        return ProcState::Gone;
    };
    match after_comm.trim_start().chars().next() {
        Some('T') | Some('t') => ProcState::Stopped,
        Some('Z') | Some('X') | None => ProcState::Zombie,
        Some(_) => ProcState::Running,
    }
}

/// Whether `pid` is a process started as `--node NAME` by a binary in `bin_dir`'s naming (`fabric-*`),
/// so a recycled pid is never mistaken for a node.
pub fn is_node_process(pid: u32, node: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let Some(program) = args.first() else {
        return false;
    };
    let program = String::from_utf8_lossy(program);
    let is_fabric_binary = Path::new(program.as_ref())
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("fabric-"));
    is_fabric_binary
        && args
            .windows(2)
            .any(|w| w[0] == b"--node" && w[1] == node.as_bytes())
}

/// The state of a node's recorded pid, counting a recycled pid as gone.
pub fn node_state(pid: u32, node: &str) -> ProcState {
    match proc_state(pid) {
        ProcState::Gone => ProcState::Gone,
        ProcState::Zombie => ProcState::Zombie,
        alive => {
            if is_node_process(pid, node) {
                alive
            } else {
                ProcState::Gone
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_running_and_not_a_node() {
        let me = std::process::id();
        assert_eq!(proc_state(me), ProcState::Running);
        assert!(!is_node_process(me, "store-a"));
        assert_eq!(node_state(me, "store-a"), ProcState::Gone);
    }

    #[test]
    fn a_stopped_child_reads_as_stopped_and_a_dead_one_as_zombie() -> std::io::Result<()> {
        let mut child = std::process::Command::new("sleep").arg("30").spawn()?;
        let pid = child.id();
        let to_nix = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(to_nix, nix::sys::signal::Signal::SIGSTOP)?;
        let mut state = ProcState::Running;
        for _ in 0..100 {
            state = proc_state(pid);
            if state == ProcState::Stopped {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(state, ProcState::Stopped);
        nix::sys::signal::kill(to_nix, nix::sys::signal::Signal::SIGKILL)?;
        for _ in 0..100 {
            state = proc_state(pid);
            if state == ProcState::Zombie {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(state, ProcState::Zombie, "killed but not reaped");
        child.wait()?;
        assert_eq!(proc_state(pid), ProcState::Gone);
        Ok(())
    }
}

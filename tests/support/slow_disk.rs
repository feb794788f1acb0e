//! A slow disk for a data directory: an ext4 file system on a loop device
//! whose writes the block layer throttles (cgroup v1
//! `blkio.throttle.write_iops_device` on the root cgroup, which also
//! covers the kernel's writeback), so every fsync waits on real I/O
//! queued behind the throttle. `dm-delay` would be closer, but this box's
//! kernel has no device-mapper; cgroup v2 `io.max` exists only below the
//! root, where the hub process would have to be moved. Needs root and
//! loop devices: [`SlowDisk::mount`] says why not and returns None.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// Where cgroup v1 throttles block writes (the root cgroup: every
/// process, and the writeback threads, go through it).
const THROTTLE: &str = "/sys/fs/cgroup/blkio/blkio.throttle.write_iops_device";

/// A throttled ext4 mount, undone (throttle, mount, loop device, image)
/// when dropped.
pub struct SlowDisk {
    dir: TempDir,
    image: PathBuf,
    device: String,
    /// `major:minor` of the loop device.
    dev_id: String,
    mounted: bool,
}

fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl SlowDisk {
    /// A `megabytes` ext4 file system limited to `write_iops` writes a
    /// second (40 makes an fsync about 100 ms here: a journal commit is a
    /// few writes). None, printing why, where it cannot be made.
    pub fn mount(megabytes: u32, write_iops: u32) -> Option<SlowDisk> {
        let skip = |why: &str| {
            eprintln!("skipping the slow-disk scenario: {why}");
            None
        };
        if !Path::new(THROTTLE).exists() {
            return skip(&format!(
                "no cgroup v1 blkio throttle ({THROTTLE}); cgroup v2 io.max would need the hub in a child cgroup"
            ));
        }
        let dir = TempDir::new();
        let image = dir.path().with_extension("img");
        let size = format!("{megabytes}M");
        let Some(_) = run("truncate", &["-s", &size, path_str(&image)]) else {
            return skip("cannot create the disk image");
        };
        if run("mkfs.ext4", &["-q", "-F", path_str(&image)]).is_none() {
            let _ = std::fs::remove_file(&image);
            return skip("mkfs.ext4 failed or is missing (e2fsprogs)");
        }
        let Some(device) = run("losetup", &["-f", "--show", path_str(&image)]) else {
            let _ = std::fs::remove_file(&image);
            return skip("no loop device (losetup failed: needs root and /dev/loop*)");
        };
        let name = device.trim_start_matches("/dev/");
        let dev_id = std::fs::read_to_string(format!("/sys/block/{name}/dev"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let mut disk = SlowDisk {
            dir,
            image,
            device,
            dev_id,
            mounted: false,
        };
        if disk.dev_id.is_empty() {
            return skip("the loop device has no major:minor in /sys/block");
        }
        if run("mount", &[&disk.device, path_str(disk.dir.path())]).is_none() {
            return skip("cannot mount the loop device");
        }
        disk.mounted = true;
        if std::fs::write(THROTTLE, format!("{} {write_iops}", disk.dev_id)).is_err() {
            return skip("cannot write the blkio throttle (needs root)");
        }
        // The throttle must bite, or the scenario would prove nothing.
        let fsync = disk.probe_fsync();
        if fsync < Duration::from_millis(20) {
            return skip(&format!(
                "the throttle does not slow fsync here ({fsync:?})"
            ));
        }
        eprintln!(
            "slow disk: {} at {write_iops} writes/s, fsync {fsync:?}",
            disk.device
        );
        Some(disk)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// How long one small write and its fsync take (the median of three).
    pub fn probe_fsync(&self) -> Duration {
        use std::io::Write;
        let path = self.path().join("probe");
        let mut times = Vec::new();
        if let Ok(mut f) = std::fs::File::create(&path) {
            for _ in 0..3 {
                let started = Instant::now();
                if f.write_all(&[0u8; 4096])
                    .and_then(|_| f.sync_all())
                    .is_err()
                {
                    return Duration::ZERO;
                }
                times.push(started.elapsed());
            }
        }
        let _ = std::fs::remove_file(&path);
        times.sort();
        times.get(1).copied().unwrap_or_default()
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        // Unthrottled first, so the unmount's writes are not held.
        let _ = std::fs::write(THROTTLE, format!("{} 0", self.dev_id));
        if self.mounted {
            let _ = run("umount", &["-l", path_str(self.dir.path())]);
        }
        let _ = run("losetup", &["-d", &self.device]);
        let _ = std::fs::remove_file(&self.image);
    }
}

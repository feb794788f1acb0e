//! A wall clock a test can step, for a spawned hub: libfaketime
//! (`LD_PRELOAD`) reading its offset from a control file on every call,
//! the monotonic clock left alone — what an NTP step does to a machine.

use std::path::PathBuf;

use super::TempDir;

/// Where Debian's `libfaketime` package puts the library.
const LIBRARIES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

/// The control file and the library; the offset starts at zero.
pub struct FakeClock {
    dir: TempDir,
    library: PathBuf,
}

impl FakeClock {
    /// None, printing why, without libfaketime.
    pub fn new() -> Option<FakeClock> {
        let Some(library) = LIBRARIES.iter().map(PathBuf::from).find(|p| p.exists()) else {
            eprintln!(
                "skipping the clock-step scenario: no libfaketime (Debian package libfaketime)"
            );
            return None;
        };
        let clock = FakeClock {
            dir: TempDir::new(),
            library,
        };
        clock.set_offset_secs(0);
        Some(clock)
    }

    fn control(&self) -> PathBuf {
        self.dir.path().join("faketime")
    }

    /// The environment of a process whose wall clock this controls.
    pub fn envs(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.library.display().to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                self.control().display().to_string(),
            ),
            // Read the file at every call: a step takes effect at once.
            ("FAKETIME_NO_CACHE".into(), "1".into()),
            // Only the wall clock steps; timers and timeouts run on.
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]
    }

    /// Puts the wall clock `secs` from the real one (relative, so it keeps
    /// running).
    pub fn set_offset_secs(&self, secs: i64) {
        std::fs::write(self.control(), format!("{secs:+}\n")).expect("write the faketime file");
    }
}

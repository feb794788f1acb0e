//! A throw-away certificate authority and a server certificate signed by
//! it, made with the `openssl` command, for every test that needs TLS
//! (a TLS-only redis-server, HAProxy's `ssl crt` bind).

use std::path::PathBuf;
use std::process::Command;

use super::{TempDir, have};

pub struct TestCa {
    dir: TempDir,
}

impl TestCa {
    /// A CA and a server certificate for `localhost` and `127.0.0.1`, valid
    /// for two days.
    pub fn make() -> TestCa {
        assert!(
            have("openssl"),
            "openssl is missing: apt-get install -y openssl"
        );
        let dir = TempDir::new();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let new_key = ["-newkey", "rsa:2048", "-nodes"];
        let ca = ["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"];
        run(&[
            &["req", "-x509"],
            &new_key[..],
            &ca,
            &["-subj", "/CN=mcp-hub-test-ca"],
        ]
        .concat());
        let csr = ["-keyout", "server.key", "-out", "server.csr"];
        run(&[&["req"], &new_key[..], &csr, &["-subj", "/CN=localhost"]].concat());
        dir.write("ext.cnf", "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        let bundle = [
            std::fs::read_to_string(dir.path().join("server.pem")).expect("server.pem"),
            std::fs::read_to_string(dir.path().join("server.key")).expect("server.key"),
        ]
        .concat();
        dir.write("bundle.pem", &bundle);
        TestCa { dir }
    }

    /// The CA certificate clients must trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// Certificate and key in one PEM, as HAProxy's `crt` wants.
    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle.pem")
    }
}

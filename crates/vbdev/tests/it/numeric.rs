//! Every numeric option of every command, given edge values (0, limits of every width and
//! one past them, negatives, fractions, hex, garbage, 100 digits) and pseudo-random ones:
//! a clear exit (0, 1 or 2), never a panic. The devices and sockets named do not exist,
//! so a command that accepts its options fails right after (exit 1) instead of running.

use crate::util::{path, vbdev};

/// Edge values, then pseudo-random ones (xorshift, fixed seed: the same run each time).
fn values() -> Vec<String> {
    let mut v: Vec<String> = [
        "0",
        "1",
        "-1",
        "2",
        "7",
        "512",
        "4096",
        "65535",
        "65536",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "0.5",
        "1e3",
        "0x10",
        "4k",
        "1T",
        "",
        "12X",
        "99999999999999999999999999999999999999999999999999",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..6 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x.to_string());
        v.push((x >> (x % 61)).to_string());
    }
    v
}

/// Runs `args` with each value in place of `{}`: exit 0, 1 or 2, no panic.
fn never_panics(args: &[&str]) {
    for val in values() {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if *a == "{}" {
                    val.clone()
                } else {
                    (*a).to_owned()
                }
            })
            .collect();
        let run = vbdev(&args);
        assert!(
            matches!(run.code, Some(0..=2)) && !run.stderr.contains("panicked"),
            "vbdev {} exited {:?}:\n{}",
            args.join(" "),
            run.code,
            run.stderr
        );
    }
}

#[test]
fn io_numeric_options_never_panic() {
    let v = "/nonexistent/vbdev-numeric.sock";
    for opt in ["--queues", "--queue-size", "--timeout-ms"] {
        never_panics(&["io", "--vhost-user", v, opt, "{}", "info"]);
    }
    never_panics(&[
        "io",
        "--vhost-user",
        v,
        "read",
        "--offset",
        "{}",
        "--length",
        "512",
    ]);
    never_panics(&[
        "io",
        "--vhost-user",
        v,
        "read",
        "--offset",
        "0",
        "--length",
        "{}",
    ]);
    never_panics(&[
        "io",
        "--vhost-user",
        v,
        "write",
        "--offset",
        "0",
        "--pattern",
        "{}",
        "--length",
        "512",
    ]);
}

#[test]
fn perf_numeric_options_never_panic() {
    let v = "/nonexistent/vbdev-numeric.sock";
    let base = ["perf", "--vhost-user", v, "-w", "rw", "-M", "50", "-t", "1"];
    for (opt, rest) in [
        ("-q", ["-o", "4k"]),
        ("-o", ["-q", "1"]),
        ("-M", ["-q", "1"]),
        ("-t", ["-q", "1"]),
        ("-k", ["-q", "1"]),
        ("-S", ["-q", "1"]),
        ("--queues", ["-q", "1"]),
        ("--queue-size", ["-q", "1"]),
        ("--timeout-ms", ["-q", "1"]),
    ] {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(rest);
        if !rest.contains(&"-o") && opt != "-o" {
            args.extend(["-o", "4k"]);
        }
        args.extend([opt, "{}"]);
        never_panics(&args);
    }
    // The embedded target's disk (it runs for a second when the values are good).
    for opt in ["--malloc", "--block-size"] {
        never_panics(&[
            "perf", "-q", "1", "-o", "4k", "-w", "read", "-t", "1", opt, "{}",
        ]);
    }
}

#[test]
fn target_serve_and_rpc_numeric_options_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let s = "/nonexistent/vbdev-numeric.sock";
    for opt in ["--queues", "--block-size", "--malloc"] {
        let mut args = vec!["target", "--socket", s, opt, "{}"];
        if opt != "--malloc" {
            args.extend(["--malloc", "1M"]);
        }
        never_panics(&args);
    }
    never_panics(&["target", "--socket", s, "--null", "{}"]);
    never_panics(&[
        "target",
        "--socket",
        s,
        "--poll",
        "--queues",
        "2",
        "--malloc",
        "1M",
        "--poll-threads",
        "{}",
    ]);
    for opt in ["--targets", "--luns"] {
        never_panics(&[
            "target",
            "--socket",
            s,
            "--dev-type",
            "scsi",
            "--malloc",
            "1M",
            opt,
            "{}",
        ]);
    }
    for opt in ["--max-request", "--timeout-ms"] {
        never_panics(&["serve", "-r", s, "-S", path(dir.path()), opt, "{}"]);
    }
    never_panics(&["rpc", "-s", s, "-t", "{}", "spdk_get_version"]);
}

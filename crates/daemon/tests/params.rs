//! Every method with parameters made of hostile values (numbers at and past every
//! limit, wrong types, odd strings) answers with a result or an error object, never a
//! panic, and the daemon keeps answering. Called on [`Daemon`] directly, where a panic
//! fails the test (the RPC server would turn it into -32603 and hide it).

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use vbdev_daemon::{Daemon, Handler};

/// The methods the daemon says it has (`rpc_get_methods`): a method added later is
/// covered without touching this test.
fn methods() -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::new(dir.path().to_path_buf(), false, Duration::from_millis(500));
    let v = d.call("rpc_get_methods", None).expect("rpc_get_methods");
    d.shutdown();
    v.as_array()
        .expect("a list")
        .iter()
        .map(|m| m.as_str().expect("names").to_owned())
        .collect()
}

/// The parameter names the methods take (and a few they do not).
const KEYS: &[&str] = &[
    "name",
    "num_blocks",
    "block_size",
    "uuid",
    "md_size",
    "dif_type",
    "physical_block_size",
    "optimal_io_boundary",
    "numa_id",
    "timeout",
    "timeout_ms",
    "trtype",
    "traddr",
    "dev_type",
    "vq_count",
    "vq_size",
    "enable",
    "period_us",
    "ctrlr",
    "dev_name",
    "readonly",
    "packed_ring",
    "cpumask",
    "delay",
    "scsi_target_num",
    "bdev_name",
    "subsystems",
    "current",
    "bogus",
];

/// Values at the edges: integer limits and their neighbours, negatives, fractions,
/// numbers as strings, wrong types, and strings that are bad names or paths.
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(-1)),
        Just(json!(512)),
        Just(json!(4096)),
        Just(json!(65535)),
        Just(json!(65536)),
        Just(json!(u32::MAX)),
        Just(json!(u64::from(u32::MAX) + 1)),
        Just(json!(i64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(u64::MAX)),
        Just(json!(1e300)),
        Just(json!(-0.5)),
        Just(json!(3.5)),
        Just(json!("12")),
        Just(json!("")),
        Just(json!("x")),
        Just(json!("Malloc0")),
        Just(json!("a/b")),
        Just(json!("\n")),
        Just(json!("user")),
        Just(json!("pci")),
        Just(json!("blk")),
        Just(json!("scsi")),
        Just(json!("0000:00:01.0")),
        Just(json!("/nonexistent/vhost.sock")),
        Just(json!("z".repeat(300))),
        Just(Value::Null),
        Just(json!(true)),
        Just(json!([])),
        Just(json!({})),
        any::<u64>().prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
    ]
}

/// Parameters that work for `method` in a fresh daemon (or after the calls before it:
/// a malloc bdev M0, a scsi controller s0), so that mutations of them reach past the
/// first check.
fn valid(method: &str) -> Value {
    match method {
        "bdev_malloc_create" | "bdev_null_create" => {
            json!({"name": "M0", "num_blocks": 64, "block_size": 512})
        }
        "bdev_malloc_delete" | "bdev_null_delete" | "bdev_get_bdevs" | "bdev_get_iostat" => {
            json!({"name": "M0"})
        }
        "vhost_create_blk_controller" => json!({"ctrlr": "b0", "dev_name": "M0"}),
        "vhost_create_scsi_controller" => json!({"ctrlr": "s0"}),
        "vhost_scsi_controller_add_target" => {
            json!({"ctrlr": "s0", "scsi_target_num": 0, "bdev_name": "M0"})
        }
        "vhost_scsi_controller_remove_target" => json!({"ctrlr": "s0", "scsi_target_num": 0}),
        "vhost_delete_controller" => json!({"ctrlr": "b0"}),
        "bdev_virtio_attach_controller" => json!({"name": "V0", "trtype": "user",
            "traddr": "/nonexistent/vhost.sock", "dev_type": "blk"}),
        "bdev_virtio_detach_controller" => json!({"name": "V0"}),
        "bdev_virtio_blk_set_hotplug" => json!({"enable": false}),
        _ => json!({}),
    }
}

/// Hostile parameters for `method`: random keys and values, or its valid parameters
/// with fields replaced or added.
fn params(method: String) -> impl Strategy<Value = Option<Value>> {
    let valid_params = valid(&method);
    let mutated = proptest::collection::vec((proptest::sample::select(KEYS), value()), 1..3)
        .prop_map(move |kv| {
            let mut v = valid_params.clone();
            if let Some(m) = v.as_object_mut() {
                for (k, x) in kv {
                    m.insert((*k).to_owned(), x);
                }
            }
            Some(v)
        });
    let random = proptest::collection::vec((proptest::sample::select(KEYS), value()), 0..8)
        .prop_map(|kv| {
            let m: Map<String, Value> = kv.into_iter().map(|(k, v)| ((*k).to_owned(), v)).collect();
            Some(Value::Object(m))
        });
    prop_oneof![
        3 => mutated,
        2 => random,
        1 => value().prop_map(Some),
        1 => Just(Some(valid(&method))),
        1 => Just(None),
    ]
}

fn call() -> impl Strategy<Value = (String, Option<Value>)> {
    proptest::sample::select(methods()).prop_flat_map(|m| (Just(m.clone()), params(m)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn any_parameters_get_an_answer_never_a_panic(
        calls in proptest::collection::vec(call(), 1..8),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let d = Daemon::new(dir.path().to_path_buf(), false, Duration::from_millis(500));
        for (method, mut params) in calls {
            let method = method.as_str();
            // A bounded wait for a bdev that never comes is the method's job, not a
            // hang: keep the case short.
            if method == "bdev_get_bdevs" {
                if let Some(Value::Object(m)) = params.as_mut() {
                    if m.get("timeout").and_then(Value::as_u64).is_some_and(|t| t <= 3_600_000) {
                        m.remove("timeout");
                    }
                }
            }
            let _ = d.call(method, params);
        }
        // Still answering, and what it lists it can describe.
        let bdevs = d.call("bdev_get_bdevs", None).expect("bdev_get_bdevs");
        prop_assert!(bdevs.is_array());
        let saved = d.call("save_config", None).expect("save_config");
        prop_assert!(saved["subsystems"].is_array());
        d.shutdown();
    }
}

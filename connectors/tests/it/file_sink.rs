//! The file sink through the conformance kit, rotation included.

use weir_connect::conformance::{Faults, check_sink};
use weir_connectors::sinks::{FileSink, FileSinkConfig};

/// Every value in the sink's files (rotated ones too), as the bytes the kit sent.
fn read_back(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut values = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            values.push(serde_json::to_vec(&line["value"]).unwrap());
        }
    }
    values
}

#[test]
fn the_file_sink_passes_the_conformance_kit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = FileSinkConfig::new(dir.path().join("out.jsonl"));
    config.rotate_bytes = 8 << 10; // several rotations
    let values: Vec<Vec<u8>> = (0..500).map(|i| format!("{{\"n\":{i}}}").into_bytes()).collect();
    check_sink(|| Box::new(FileSink::new(config.clone())), || read_back(dir.path()), &values, &Faults::default());
}

//! Bytes checked against tensorboard 2.21 / torch 2.11, printed once by Python:
//! `RecordWriter(io.BytesIO()).write(data)` for the framing, `Event(...).SerializeToString()`
//! and `torch.utils.tensorboard.summary.hparams(...)` for the messages.

use super::event_file::frame;
use super::hparams::{flatten, summaries, HpValue};
use super::proto::{Event, SourceMetadata, Summary, SummaryValue, What};
use super::*;
use prost::Message;

/// `RecordWriter.write(b"")`.
const EMPTY_RECORD: &[u8] = &[0, 0, 0, 0, 0, 0, 0, 0, 41, 3, 152, 7, 216, 234, 130, 162];

/// `RecordWriter.write(Event(wall_time=1.5, step=3, summary=scalar("loss", 0.1)))`.
const SCALAR_RECORD: &[u8] = &[
    26, 0, 0, 0, 0, 0, 0, 0, 18, 155, 216, 45, 9, 0, 0, 0, 0, 0, 0, 248, 63, 16, 3, 42, 13, 10, 11,
    10, 4, 108, 111, 115, 115, 21, 205, 204, 204, 61, 115, 124, 234, 60,
];

/// `Event(wall_time=2.0, file_version="brain.Event:2", source_metadata=SourceMetadata(writer="w"))`.
const FIRST_EVENT: &[u8] = &[
    9, 0, 0, 0, 0, 0, 0, 0, 64, 26, 13, 98, 114, 97, 105, 110, 46, 69, 118, 101, 110, 116, 58, 50,
    82, 3, 10, 1, 119,
];

/// `hparams({"lr": 0.1, "name": "mlp", "flag": True, "n": 3}, {"hp_metric": -1})`: the
/// experiment summary, then the session-end summary.
const EXPERIMENT: &[u8] = &[
    10, 89, 10, 20, 95, 104, 112, 97, 114, 97, 109, 115, 95, 47, 101, 120, 112, 101, 114, 105, 109,
    101, 110, 116, 74, 65, 10, 63, 10, 7, 104, 112, 97, 114, 97, 109, 115, 18, 52, 18, 50, 34, 6,
    10, 2, 108, 114, 32, 3, 34, 8, 10, 4, 110, 97, 109, 101, 32, 1, 34, 8, 10, 4, 102, 108, 97,
    103, 32, 3, 34, 5, 10, 1, 110, 32, 3, 42, 13, 10, 11, 18, 9, 104, 112, 95, 109, 101, 116, 114,
    105, 99,
];
const SESSION_END: &[u8] = &[
    10, 47, 10, 26, 95, 104, 112, 97, 114, 97, 109, 115, 95, 47, 115, 101, 115, 115, 105, 111, 110,
    95, 101, 110, 100, 95, 105, 110, 102, 111, 74, 17, 10, 15, 10, 7, 104, 112, 97, 114, 97, 109,
    115, 18, 4, 34, 2, 8, 1,
];

/// The session-start summaries of `hparams({"lr": 0.1}, ..)` and `hparams({"name": "mlp"}, ..)`
/// (one entry each: Python orders a map's entries by hash).
const SESSION_START_LR: &[u8] = &[
    10, 64, 10, 28, 95, 104, 112, 97, 114, 97, 109, 115, 95, 47, 115, 101, 115, 115, 105, 111, 110,
    95, 115, 116, 97, 114, 116, 95, 105, 110, 102, 111, 74, 32, 10, 30, 10, 7, 104, 112, 97, 114,
    97, 109, 115, 18, 19, 26, 17, 10, 15, 10, 2, 108, 114, 18, 9, 17, 154, 153, 153, 153, 153, 153,
    185, 63,
];
const SESSION_START_NAME: &[u8] = &[
    10, 62, 10, 28, 95, 104, 112, 97, 114, 97, 109, 115, 95, 47, 115, 101, 115, 115, 105, 111, 110,
    95, 115, 116, 97, 114, 116, 95, 105, 110, 102, 111, 74, 30, 10, 28, 10, 7, 104, 112, 97, 114,
    97, 109, 115, 18, 17, 26, 15, 10, 13, 10, 4, 110, 97, 109, 101, 18, 5, 26, 3, 109, 108, 112,
];

#[test]
fn records_are_framed_as_tensorboards_record_writer() {
    assert_eq!(frame(b""), EMPTY_RECORD);
    let event = Event {
        wall_time: 1.5,
        step: 3,
        what: Some(What::Summary(Summary {
            value: vec![SummaryValue {
                tag: "loss".into(),
                simple_value: Some(0.1f64 as f32),
                metadata: None,
            }],
        })),
        source_metadata: None,
    };
    assert_eq!(frame(&event.encode_to_vec()), SCALAR_RECORD);
    let first = Event {
        wall_time: 2.0,
        step: 0,
        what: Some(What::FileVersion("brain.Event:2".into())),
        source_metadata: Some(SourceMetadata { writer: "w".into() }),
    };
    assert_eq!(first.encode_to_vec(), FIRST_EVENT);
}

fn dict(items: Vec<(&str, Value)>) -> Value {
    Value::Dict(items.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

#[test]
fn hparams_summaries_are_torchs() {
    let params = dict(vec![
        ("lr", Value::Float(0.1)),
        ("name", Value::Str("mlp".into())),
        ("flag", Value::Bool(true)),
        ("n", Value::Int(3)),
    ]);
    let [exp, _, end] = summaries(&flatten(&params), &["hp_metric".into()]);
    assert_eq!(exp.encode_to_vec(), EXPERIMENT);
    assert_eq!(end.encode_to_vec(), SESSION_END);
    let [_, start, _] = summaries(&flatten(&dict(vec![("lr", Value::Float(0.1))])), &[]);
    assert_eq!(start.encode_to_vec(), SESSION_START_LR);
    let name = dict(vec![("name", Value::Str("mlp".into()))]);
    let [_, start, _] = summaries(&flatten(&name), &[]);
    assert_eq!(start.encode_to_vec(), SESSION_START_NAME);
}

/// Lightning's `_flatten_dict` + `_sanitize_params` (facts from its doctests and Python).
#[test]
fn hparams_are_flattened_and_sanitized_as_lightning() {
    let params = dict(vec![
        (
            "a",
            dict(vec![
                ("b", Value::Int(1)),
                ("c", dict(vec![("d", Value::None)])),
            ]),
        ),
        (
            "dl",
            Value::List(vec![
                dict(vec![("x", Value::Float(0.5))]),
                dict(vec![("y", Value::Str("s".into()))]),
            ]),
        ),
        ("empty", Value::List(vec![])),
        (
            "l",
            Value::List(vec![
                Value::Int(1),
                Value::Str("a".into()),
                Value::Float(2.0),
            ]),
        ),
        ("t", Value::Tuple(vec![Value::Int(1)])),
        ("flag", Value::Bool(false)),
    ]);
    let flat: Vec<(String, HpValue)> = flatten(&params).into_iter().collect();
    let num = |x: f64| HpValue::Number(x);
    let s = |x: &str| HpValue::Str(x.into());
    assert_eq!(
        flat,
        vec![
            ("a/b".into(), num(1.0)),
            ("a/c/d".into(), s("None")),
            ("dl/0/x".into(), num(0.5)),
            ("dl/1/y".into(), s("s")),
            ("l".into(), s("[1, 'a', 2.0]")),
            ("t".into(), s("(1,)")),
            ("flag".into(), num(0.0)),
        ]
    );
}

#[test]
fn a_run_writes_one_event_file_readable_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut tb = TensorBoardLogger::default();
    tb.location_mut()
        .unwrap()
        .resolve(dir.path(), &mut Default::default());
    tb.log_hyperparams(&dict(vec![("lr", Value::Float(0.1))]))
        .unwrap();
    let metrics: Metrics = [("loss".to_owned(), Scalar::Float(0.5))]
        .into_iter()
        .collect();
    tb.log_metrics(&metrics, 7).unwrap();
    tb.save().unwrap();
    let path = tb.event_file().unwrap().to_owned();
    let name = path.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    assert!(path.starts_with(dir.path().join("lightning_logs/version_0")));
    assert!(path.with_file_name("hparams.yaml").is_file());
    // records: file version, hp_metric, 3 hparams summaries, loss
    let bytes = std::fs::read(&path).unwrap();
    let mut events = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
        let data = &rest[12..12 + len];
        assert_eq!(frame(data), rest[..len + 16]);
        events.push(Event::decode(data).unwrap());
        rest = &rest[len + 16..];
    }
    assert_eq!(events.len(), 6);
    assert_eq!(
        events[0].what,
        Some(What::FileVersion("brain.Event:2".into()))
    );
    let Some(What::Summary(s)) = &events[5].what else {
        panic!("{:?}", events[5]);
    };
    assert_eq!(
        (s.value[0].tag.as_str(), s.value[0].simple_value),
        ("loss", Some(0.5))
    );
    assert_eq!(events[5].step, 7);
    tb.finalize(RunStatus::Success).unwrap();
    assert!(tb.event_file().is_none());
}

//! Unit tests of Python-compatible formatting (CPython facts, and the venv's `format()`).
use super::template::*;
use super::*;

fn m(pairs: &[(&str, MetricValue)]) -> Metrics {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}
use MetricValue::{Float as F, Int as I};

#[test]
fn float_repr_matches_python() {
    let cases = [
        (0.1, "0.1"),
        (1.0, "1.0"),
        (-2.5, "-2.5"),
        (1e-5, "1e-05"),
        (0.0001, "0.0001"),
        (1e16, "1e+16"),
        (1e15, "1000000000000000.0"),
        (123456789.125, "123456789.125"),
        (1.5e300, "1.5e+300"),
        (f64::from(0.1f32), "0.10000000149011612"),
        (-0.0, "-0.0"),
    ];
    for (x, want) in cases {
        assert_eq!(repr_float(x), want, "repr({x})");
    }
}

#[test]
fn format_specs_match_python() {
    // expected values printed by CPython 3.11
    let cases: &[(MetricValue, &str, &str)] = &[
        (I(5), "<05", "50000"),
        (I(5), "05", "00005"),
        (F(-0.001), "+.2f", "-0.00"),
        (F(1234.5678), "+.2f", "+1234.57"),
        (I(5), "010.3e", "05.000e+00"),
        (F(1234.5678), "010.3e", "01.235e+03"),
        (F(1234.5678), ".3", "1.23e+03"),
        (F(-0.04), ".3", "-0.04"),
        (F(-0.001), ".0f", "-0"),
        (I(5), "#.0f", "5."),
        (F(1234.5678), ",", "1,234.5678"),
        (F(1234.5678), "_.2f", "1_234.57"),
        (I(5), "08,.2f", "0,005.00"),
        (F(-0.001), "08,.2f", "-0,000.00"),
        (F(-0.04), "z.1f", "0.0"),
        (F(1234.5678), "e", "1.234568e+03"),
        (F(1234.5678), "g", "1234.57"),
        (F(-0.001), ".2%", "-0.10%"),
        (F(-0.001), "^9.2f", "  -0.00  "),
        (I(5), "*>8d", "*******5"),
        (I(5), "#b", "0b101"),
    ];
    for (v, spec, want) in cases {
        assert_eq!(
            format_value(*v, spec).as_deref(),
            Ok(*want),
            "format({v:?}, {spec:?})"
        );
    }
    assert_eq!(
        format_value(I(5), ".3").unwrap_err(),
        "Precision not allowed in integer format specifier"
    );
    assert_eq!(
        format_value(F(0.5), "d").unwrap_err(),
        "Unknown format code 'd' for object of type 'float'"
    );
}

#[test]
fn lightning_format_checkpoint_name_cases() {
    let f = |t: Option<&str>, ms: &[(&str, MetricValue)], prefix, auto| {
        format_checkpoint_template(t, &m(ms), prefix, auto, "-", "=").unwrap()
    };
    // from Lightning's tests/tests_pytorch/checkpointing/test_model_checkpoint.py
    assert_eq!(
        f(Some(""), &[("epoch", I(3)), ("step", I(2))], None, true),
        "epoch=3-step=2"
    );
    assert_eq!(
        f(None, &[("epoch", I(3)), ("step", I(2))], Some("test"), true),
        "test-epoch=3-step=2"
    );
    assert_eq!(f(Some("ckpt"), &[], Some("test"), true), "test-ckpt");
    assert_eq!(
        f(
            Some("{epoch:03d}-{acc}"),
            &[("epoch", I(3)), ("acc", F(0.03))],
            None,
            true
        ),
        "epoch=003-acc=0.03"
    );
    assert_eq!(
        f(
            Some("{epoch:03d}-{epoch_test:03d}"),
            &[("epoch", I(3)), ("epoch_test", I(3))],
            None,
            true
        ),
        "epoch=003-epoch_test=003"
    );
    assert_eq!(
        format_checkpoint_template(
            Some("{epoch},{acc:.5f}"),
            &m(&[("epoch", I(3)), ("acc", F(0.03))]),
            Some("test"),
            true,
            "@",
            "="
        )
        .unwrap(),
        "test@epoch=3,acc=0.03000"
    );
    assert_eq!(
        format_checkpoint_template(
            Some("{epoch:03d}-{acc}"),
            &m(&[("epoch", I(3)), ("acc", F(0.03))]),
            None,
            true,
            "-",
            ":"
        )
        .unwrap(),
        "epoch:003-acc:0.03"
    );
    assert_eq!(
        f(
            Some("{epoch}_{val/loss:.5f}"),
            &[("epoch", I(4)), ("val/loss", F(0.03))],
            None,
            true
        ),
        "epoch=4_val/loss=0.03000"
    );
    assert_eq!(
        f(
            Some("epoch={epoch:03d}-val_acc={val/acc}"),
            &[("epoch", I(3)), ("val/acc", F(0.03))],
            None,
            false
        ),
        "epoch=003-val_acc=0.03"
    );
    assert_eq!(
        f(
            Some("mAP@0.50={val/mAP@0.50:.4f}"),
            &[("val/mAP@0.50", F(0.2))],
            None,
            false
        ),
        "mAP@0.50=0.2000"
    );
    // docstring cases
    assert_eq!(f(Some("{missing:d}"), &[], None, true), "missing=0");
    assert_eq!(
        f(
            Some("{epoch}-{val_loss:.2f}"),
            &[("epoch", I(2)), ("val_loss", F(0.123456))],
            None,
            true
        ),
        "epoch=2-val_loss=0.12"
    );
}

#[test]
fn bad_templates_are_errors_not_panics() {
    for t in ["{epoch", "a}b", "{epoch:{w}}", "{0}", "{epoch:d.2}"] {
        assert!(
            format_checkpoint_template(Some(t), &m(&[("epoch", I(1))]), None, true, "-", "=")
                .is_err(),
            "{t}"
        );
    }
}

proptest::proptest! {
    /// Any template and metric values give a name or an error, never a panic.
    #[test]
    fn arbitrary_templates_never_panic(
        tpl in "[{}:!.\\[\\]0-9a-z/%=,_<>^+ #-]{0,24}",
        x in proptest::num::f64::ANY,
        i in proptest::num::i64::ANY,
    ) {
        let ms = m(&[("a", F(x)), ("b", I(i)), ("epoch", I(i))]);
        let _ = format_checkpoint_template(Some(&tpl), &ms, None, true, "-", "=");
        let _ = format_checkpoint_template(Some(&tpl), &ms, Some("p"), false, "-", "=");
        let _ = format_value(F(x), &tpl);
        let _ = format_value(I(i), &tpl);
    }
}

#[test]
fn reprs() {
    assert_eq!(repr_str("val_loss"), "'val_loss'");
    assert_eq!(repr_str("it's"), "\"it's\"");
    assert_eq!(
        repr_timedelta(Duration::from_secs(60)),
        "datetime.timedelta(seconds=60)"
    );
    assert_eq!(repr_timedelta(Duration::ZERO), "datetime.timedelta(0)");
    assert_eq!(
        repr_timedelta(Duration::from_secs(2 * 86400) + Duration::from_micros(5)),
        "datetime.timedelta(days=2, microseconds=5)"
    );
}

/// Runs `script` with one JSON argument in the project's venv (`LIGHTNING_RS_PYTHON`, set
/// by `.cargo/config.toml`) and parses its JSON output; `None` without the venv.
fn venv_python(script: &str, arg: &serde_json::Value) -> Option<serde_json::Value> {
    let py = std::env::var_os("LIGHTNING_RS_PYTHON").map(std::path::PathBuf::from);
    let Some(py) = py.filter(|p| p.exists()) else {
        eprintln!("skipping: no Python venv (run scripts/setup.sh)");
        return None;
    };
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(script)
        .arg(arg.to_string())
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("python printed JSON"))
}

/// Every value x spec pair formats as Python's `format(x, spec)`, or fails where it raises
/// (checked against the venv's CPython, 848 cases).
#[test]
fn format_specs_match_the_venvs_python() {
    use serde_json::json;
    let values = [
        I(0),
        I(7),
        I(-1234567),
        F(0.0),
        F(-0.0),
        F(0.5),
        F(2.5),
        F(-0.001),
        F(1234.5678),
        F(f64::from(0.1f32)),
        F(1e-7),
        F(9.9999),
        F(123456789.0),
        F(1e22),
        F(f64::NAN),
        F(f64::NEG_INFINITY),
    ];
    let specs = [
        "", "d", "02d", "03d", "5", "<5", "^7", ">+8", "=+8", "*^9", "05", "<05", " ", "+", ",",
        "_", "08,", "x", "#x", "#o", "#b", "X", "f", ".0f", ".1f", ".2f", ".4f", "#.0f", "+.3f",
        "010.2f", "z.1f", "e", ".2e", "E", "010.3e", "g", ".3g", ".1g", "#.3g", "G", "%", ".1%",
        ".3", ".1", "12.4", "08,.2f", ",.2f", "n", "c", "<3c", "s", ".2d", "q",
    ];
    let mut ours = vec![];
    let mut args = vec![];
    for v in values {
        for spec in specs {
            ours.push(match format_value(v, spec) {
                Ok(s) => json!({ "ok": s }),
                Err(_) => json!({ "err": true }),
            });
            let (ty, text) = match v {
                I(i) => ("int", i.to_string()),
                F(x) => ("float", format!("{x:e}")),
            };
            args.push(json!({ "t": ty, "v": text, "spec": spec }));
        }
    }
    let script = r#"
import json, sys
out = []
for c in json.loads(sys.argv[1]):
    x = int(c["v"]) if c["t"] == "int" else float(c["v"])
    try:
        out.append({"ok": format(x, c["spec"])})
    except Exception:
        out.append({"err": True})
print(json.dumps(out))
"#;
    let Some(theirs) = venv_python(script, &serde_json::Value::Array(args.clone())) else {
        return;
    };
    let theirs = theirs.as_array().expect("a list");
    assert_eq!(ours.len(), theirs.len());
    let bad: Vec<String> = ours
        .iter()
        .zip(theirs)
        .zip(&args)
        .filter(|((o, t), _)| o != t)
        .map(|((o, t), a)| format!("{a}: ours {o} python {t}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

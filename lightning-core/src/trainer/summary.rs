//! What the trainer prints where Lightning does: the model summary at the start of `fit`
//! (`enable_model_summary`), and one line per epoch when stdout is not a terminal (a job's
//! log), where the progress bar is not drawn.

use crate::traverse::{TensorKind, Traverse};
use indexmap::IndexMap;
use std::time::Duration;

/// Parameter counts of a module (or of one of its fields).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    /// Elements of parameters that require grad.
    trainable: i64,
    /// Elements of parameters that do not (frozen).
    frozen: i64,
    /// Bytes of every parameter.
    bytes: i64,
}

fn counts(m: &dyn Traverse) -> Counts {
    let mut c = Counts::default();
    m.visit("", &mut |_, t, kind| {
        if kind == TensorKind::Parameter {
            let n = t.numel() as i64;
            if t.requires_grad() {
                c.trainable += n;
            } else {
                c.frozen += n;
            }
            c.bytes += n * t.kind().elt_size_in_bytes() as i64;
        }
    });
    c
}

/// Lightning's `ModelSummary` table: each submodule of `model` (name, type, parameter
/// count), then trainable, non-trainable and total parameters and their size in MB.
///
/// ```text
///   | Name   | Type          | Params
/// ----------------------------------------
/// 0 | stem   | Conv<[i64; 2]> | 80
/// 1 | blocks | Vec<Residual> | 2.4 K
/// ----------------------------------------
/// 2.5 K     Trainable params
/// 0         Non-trainable params
/// 2.5 K     Total params
/// 0.010     Total estimated model params size (MB)
/// ```
pub fn model_summary(model: &dyn Traverse) -> String {
    let mut rows: Vec<[String; 3]> = Vec::new();
    model.visit_children(&mut |name, child| {
        if !child.is_tensor() {
            let c = counts(child);
            rows.push([
                name.to_owned(),
                child.layer_type(),
                human_count(c.trainable + c.frozen),
            ]);
        }
    });
    let head = ["Name".to_owned(), "Type".to_owned(), "Params".to_owned()];
    let widths: Vec<usize> = (0..3)
        .map(|i| {
            rows.iter()
                .chain(std::iter::once(&head))
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let idx_width = rows.len().saturating_sub(1).to_string().len();
    let line = |idx: &str, r: &[String; 3]| {
        format!(
            "{idx:idx_width$} | {:w0$} | {:w1$} | {}",
            r[0],
            r[1],
            r[2],
            w0 = widths[0],
            w1 = widths[1]
        )
        .trim_end()
        .to_owned()
    };
    let header = line("", &head);
    let rule = "-".repeat(header.chars().count());
    let mut out = vec![header, rule.clone()];
    out.extend(
        rows.iter()
            .enumerate()
            .map(|(i, r)| line(&i.to_string(), r)),
    );
    out.push(rule);
    let c = counts(model);
    for (n, what) in [
        (human_count(c.trainable), "Trainable params".to_owned()),
        (human_count(c.frozen), "Non-trainable params".to_owned()),
        (
            human_count(c.trainable + c.frozen),
            "Total params".to_owned(),
        ),
        (
            format!("{:.3}", c.bytes as f64 / 1e6),
            "Total estimated model params size (MB)".to_owned(),
        ),
    ] {
        out.push(format!("{n:<10}{what}"));
    }
    out.join("\n")
}

/// Lightning's `get_human_readable_count`: `80`, `2.4 K`, `12.0 M`, `101 M`.
fn human_count(n: i64) -> String {
    const LABELS: [&str; 5] = ["", "K", "M", "B", "T"];
    let digits = if n > 0 { n.ilog10() as usize + 1 } else { 1 };
    let groups = digits.div_ceil(3).min(LABELS.len());
    let index = groups - 1;
    let x = n as f64 / 10f64.powi(3 * index as i32);
    if index == 0 {
        n.to_string()
    } else if x >= 100.0 {
        format!("{} {}", x as i64, LABELS[index])
    } else {
        format!("{x:.1} {}", LABELS[index])
    }
}

/// The line an epoch ends with in a log (stdout not a terminal): batches, time,
/// throughput and the epoch's metrics.
pub(crate) fn epoch_line(
    epoch: i64,
    batches: usize,
    elapsed: Duration,
    metrics: &IndexMap<String, f64>,
) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        batches as f64 / secs
    } else {
        0.0
    };
    let mut line = format!("Epoch {epoch}: {batches} batches in {secs:.2}s ({rate:.2} it/s)");
    for (k, v) in metrics {
        line.push_str(&format!(" {k}={v:.4}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_like_lightnings() {
        assert_eq!(human_count(0), "0");
        assert_eq!(human_count(999), "999");
        assert_eq!(human_count(2_432), "2.4 K");
        assert_eq!(human_count(123_456), "123 K");
        assert_eq!(human_count(12_000_000), "12.0 M");
    }

    #[test]
    fn epoch_line_has_time_throughput_and_metrics() {
        let mut m = IndexMap::new();
        m.insert("train_loss".to_owned(), 0.5);
        m.insert("val_acc".to_owned(), 0.875);
        assert_eq!(
            epoch_line(3, 10, Duration::from_millis(500), &m),
            "Epoch 3: 10 batches in 0.50s (20.00 it/s) train_loss=0.5000 val_acc=0.8750"
        );
    }
}

//! `str.format` over a dict of metrics, and Lightning's checkpoint-name templates
//! (`_format_checkpoint_name`).

use super::*;

/// Python's `str.format` of `template` with a single positional argument, a dict of metrics
/// (`'{0[epoch]:02d}'.format(metrics)`). Supports what Lightning's rewritten templates use:
/// `{0[key]}` fields with a format spec, and `{{`/`}}` escapes.
pub(crate) fn format_with_metrics(template: &str, metrics: &Metrics) -> Result<String, String> {
    let chars: Vec<char> = template.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '}' {
            if chars.get(i + 1) == Some(&'}') {
                out.push('}');
                i += 2;
                continue;
            }
            return Err("Single '}' encountered in format string".into());
        }
        if c != '{' {
            out.push(c);
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&'{') {
            out.push('{');
            i += 2;
            continue;
        }
        // a replacement field: find its end, skipping [...] in the field name
        let start = i + 1;
        let mut j = start;
        let mut depth = 1;
        let mut in_name = true;
        while j < chars.len() {
            match chars[j] {
                '[' if in_name => {
                    while j < chars.len() && chars[j] != ']' {
                        j += 1;
                    }
                }
                ':' | '!' if in_name => in_name = false,
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        if j >= chars.len() {
            return Err("Single '{' encountered in format string".into());
        }
        let field: String = chars[start..j].iter().collect();
        out.push_str(&render_field(&field, metrics)?);
        i = j + 1;
    }
    Ok(out)
}

/// Renders one `{...}` field body: `0[key]!conv:spec`.
pub(super) fn render_field(field: &str, metrics: &Metrics) -> Result<String, String> {
    // split the field name from conversion/spec, honouring brackets
    let mut name_end = field.len();
    let mut in_bracket = false;
    for (k, c) in field.char_indices() {
        match c {
            '[' => in_bracket = true,
            ']' => in_bracket = false,
            ':' | '!' if !in_bracket => {
                name_end = k;
                break;
            }
            _ => {}
        }
    }
    let name = &field[..name_end];
    let rest = &field[name_end..];
    let spec = if let Some(conv) = rest.strip_prefix('!') {
        return Err(format!(
            "conversion '!{}' is not supported in checkpoint filenames",
            conv.split(':').next().unwrap_or("")
        ));
    } else {
        rest.strip_prefix(':').unwrap_or("")
    };
    if spec.contains(['{', '}']) {
        return Err("nested replacement fields in a format spec are not supported".into());
    }
    let arg_end = name.find(['[', '.']).unwrap_or(name.len());
    let arg = &name[..arg_end];
    if !(arg.is_empty() || arg == "0") {
        return Err(format!(
            "Replacement index {arg} out of range for positional args tuple"
        ));
    }
    let accessor = &name[arg_end..];
    let Some(key) = accessor.strip_prefix('[').and_then(|a| a.strip_suffix(']')) else {
        return Err(format!(
            "field '{{{name}}}' does not name one metric (expected `{{0[metric]}}`)"
        ));
    };
    if key.contains(']') {
        return Err("Only '.' or '[' may follow ']' in format field specifier".into());
    }
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("KeyError: {key}"));
    }
    let v = metrics
        .get(key)
        .ok_or_else(|| format!("KeyError: {}", repr_str(key)))?;
    format_value(*v, spec)
}

/// Lightning's `ModelCheckpoint._format_checkpoint_name`: rewrites `{name...}` groups to
/// `name={0[name]...}` (with `auto_insert_metric_name`) or `{0[name]...}`, fills missing names
/// with `0`, formats, and prepends `prefix` joined with `join_char`.
pub(crate) fn format_checkpoint_template(
    filename: Option<&str>,
    metrics: &Metrics,
    prefix: Option<&str>,
    auto_insert_metric_name: bool,
    join_char: &str,
    equals_char: &str,
) -> Result<String, String> {
    let mut filename = match filename {
        Some(f) if !f.is_empty() => f.to_owned(),
        _ => format!("{{epoch}}{join_char}{{step}}"),
    };
    let mut groups = find_groups(&filename);
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let mut metrics = metrics.clone();
    for group in groups {
        let name = &group[1..];
        if auto_insert_metric_name {
            filename = filename.replace(&group, &format!("{name}{equals_char}{{{name}"));
        }
        filename = filename.replace(&group, &format!("{{0[{name}]"));
        metrics
            .entry(name.to_owned())
            .or_insert(MetricValue::Int(0));
    }
    let mut filename = format_with_metrics(&filename, &metrics)?;
    if let Some(p) = prefix {
        filename = format!("{p}{join_char}{filename}");
    }
    Ok(filename)
}

/// `re.findall(r"(\{.*?)[:\}]", s)`: each `{` up to (not including) the next `:` or `}` on the
/// same line.
pub(super) fn find_groups(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut groups = vec![];
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '{' {
            let mut j = i + 1;
            while j < chars.len() && !matches!(chars[j], ':' | '}' | '\n') {
                j += 1;
            }
            if j < chars.len() && chars[j] != '\n' {
                groups.push(chars[i..j].iter().collect());
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    groups
}

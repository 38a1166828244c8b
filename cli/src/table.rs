//! Aligned text tables and the number formats of the CLI's output.

/// Milliseconds with 2 decimals below 100 ms, 1 above.
pub(crate) fn ms(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub(crate) fn ms_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), ms)
}

pub(crate) fn pct(v: f64) -> String {
    format!("{:.1}", v * 100.0)
}

pub(crate) fn signed(s: String) -> String {
    if s.starts_with('-') {
        s
    } else {
        format!("+{s}")
    }
}

pub(crate) struct Table {
    head: Vec<&'static str>,
    /// Columns aligned left (text); the others are right-aligned (numbers).
    left: Vec<usize>,
    rows: Vec<Vec<String>>,
}

/// A string of the API as printed: control characters escaped (see `escape_controls`).
pub(crate) fn safe(s: &str) -> String {
    inferscope_api::escape_controls(s)
}

impl Table {
    pub(crate) fn new(head: &[&'static str], left: &[usize]) -> Self {
        Self {
            head: head.to_vec(),
            left: left.to_vec(),
            rows: Vec::new(),
        }
    }

    /// A row; every cell is [`safe`] (cells hold strings clients of the engine chose).
    pub(crate) fn row(&mut self, r: Vec<String>) {
        self.rows.push(r.into_iter().map(|c| safe(&c)).collect());
    }

    pub(crate) fn render(&self) -> String {
        let n = self.head.len();
        let mut w = vec![0; n];
        for r in std::iter::once(&self.head.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .chain(&self.rows)
        {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let head: Vec<String> = self.head.iter().map(|s| s.to_string()).collect();
        for r in std::iter::once(&head).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate().take(n) {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = w[i] - c.chars().count();
                if self.left.contains(&i) {
                    line.push_str(c);
                    if i + 1 < n {
                        line.push_str(&" ".repeat(pad));
                    }
                } else {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(c);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(safe("llama-8b"), "llama-8b");
        assert_eq!(safe("m\u{1b}]0;pwned\u{7}x"), "m\\u{1b}]0;pwned\\u{7}x");
        assert_eq!(safe("a\nb\u{9b}c\u{7f}"), "a\\u{a}b\\u{9b}c\\u{7f}");
        assert_eq!(safe("模型 é"), "模型 é");
        let mut t = Table::new(&["model"], &[0]);
        t.row(vec!["\u{1b}[2J".into()]);
        assert!(!t.render().contains('\u{1b}'), "{}", t.render());
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["name", "ms"], &[0]);
        t.row(vec!["queue".into(), ms(1234.5678)]);
        t.row(vec!["x".into(), ms(1.234)]);
        let s = t.render();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "name       ms");
        assert_eq!(lines[1], "queue  1234.6");
        assert_eq!(lines[2], "x        1.23");
    }
}

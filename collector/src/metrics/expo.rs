//! A small writer for the Prometheus text format.

use std::fmt::Write;

#[derive(Debug, Default)]
pub struct Exposition(String);

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition {
    /// `# HELP` and `# TYPE` lines of a family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A counter family with one sample per label value: `names[i]`
    /// counted by `values[i]`.
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        names: &[&str],
        values: &[std::sync::atomic::AtomicU64],
    ) {
        self.family(name, "counter", help);
        for (n, c) in names.iter().zip(values) {
            self.sample(
                name,
                &[(label, n)],
                c.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
    }

    pub fn finish(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_and_escapes_labels() {
        let mut e = Exposition::default();
        e.family("x_total", "counter", "Things.");
        e.sample("x_total", &[("a", "q\"b\\c\nd")], 3);
        e.sample("x_total", &[], 1.5);
        assert_eq!(
            e.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"q\\\"b\\\\c\\nd\"} 3\nx_total 1.5\n"
        );
    }
}

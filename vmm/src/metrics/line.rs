//! One metrics line in Firecracker's shape: every group and field of [`super::schema`], zero
//! where Kiln counts nothing, per-device groups (`block_<id>`, `net_<id>`) as their devices
//! report, each also added into its aggregate (`block`, `net`), and Kiln's own counters, which
//! Firecracker lacks, under the `kiln` group as `kiln.<group>.<name>`.

use serde_json::{json, Map, Value};

use super::schema;
use super::Counter;

/// The group of Kiln's own counters.
pub const KILN_GROUP: &str = "kiln";

/// Where a counter goes in a line: `[group, name]` when Firecracker has that field,
/// `[group, field, part]` for a part of one of its latency aggregates (named
/// `<field>.<part>`, e.g. `read_agg.sum_us`), or `["kiln", group, name]`.
pub fn path(group: &str, name: &str) -> Vec<String> {
    let (field, part) = match name.split_once('.') {
        Some((field, part)) => (field, Some(part)),
        None => (name, None),
    };
    let shape_fits = match part {
        None => !schema::is_aggregate(field),
        Some(part) => schema::is_aggregate(field) && schema::AGGREGATE_PARTS.contains(&part),
    };
    let known = shape_fits && schema::fields(group).is_some_and(|fields| fields.contains(&field));
    if known {
        [group, field]
            .into_iter()
            .chain(part)
            .map(String::from)
            .collect()
    } else {
        vec![KILN_GROUP.to_string(), group.to_string(), name.to_string()]
    }
}

/// A line being built.
#[derive(Debug)]
pub struct Line(Map<String, Value>);

impl Line {
    /// Every group of the schema, every field 0.
    pub fn new() -> Self {
        let mut groups = Map::new();
        for (group, fields) in schema::GROUPS {
            groups.insert((*group).to_string(), zeros(fields));
        }
        Line(groups)
    }

    /// Adds a counter's increase where it goes, and into its aggregate for a per-device group.
    pub fn add(&mut self, c: &Counter) {
        self.put(&c.group, &c.name, c.total, true);
        if let Some(kind) = schema::device_kind(&c.group) {
            self.put(kind, &c.name, c.total, true);
        }
    }

    /// Sets a stored value (a gauge) where it goes.
    pub fn set(&mut self, c: &Counter) {
        self.put(&c.group, &c.name, c.total, false);
    }

    fn put(&mut self, group: &str, name: &str, value: u64, add: bool) {
        if let Some(fields) = schema::fields(group) {
            if !self.0.contains_key(group) {
                self.0.insert(group.to_string(), zeros(fields));
            }
        }
        let path = path(group, name);
        let mut node = &mut self.0;
        let Some((last, groups)) = path.split_last() else {
            return;
        };
        for key in groups {
            let entry = node.entry(key.clone()).or_insert_with(|| json!({}));
            let Some(next) = entry.as_object_mut() else {
                return;
            };
            node = next;
        }
        let before = if add {
            node.get(last).and_then(Value::as_u64).unwrap_or(0)
        } else {
            0
        };
        node.insert(last.clone(), before.saturating_add(value).into());
    }

    /// The line, stamped with `utc_timestamp_ms`.
    pub fn finish(mut self, now_ms: u64) -> Value {
        self.0.insert("utc_timestamp_ms".into(), now_ms.into());
        if !self.0.contains_key(KILN_GROUP) {
            self.0.insert(KILN_GROUP.into(), json!({}));
        }
        Value::Object(self.0)
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

fn zeros(fields: &[&str]) -> Value {
    let fields = fields.iter().map(|f| {
        let zero = if schema::is_aggregate(f) {
            let parts = schema::AGGREGATE_PARTS.map(|part| (part.to_string(), json!(0)));
            Value::Object(parts.into_iter().collect())
        } else {
            json!(0)
        };
        ((*f).to_string(), zero)
    });
    Value::Object(fields.collect())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::metrics) const REFERENCE: &str =
        include_str!("testdata/firecracker-1.16.1-metrics-line.json");

    /// Panics unless every key path of Firecracker's line is in `line`, with the same shape;
    /// per-device groups (the reference's `block_rootfs`) only when `line` has that device.
    pub(in crate::metrics) fn assert_has_reference_fields(line: &Value) {
        let reference: Value = serde_json::from_str(REFERENCE).unwrap();
        let mut paths = Vec::new();
        key_paths(&reference, &[], &mut paths);
        assert!(paths.len() >= 300, "{}", paths.len());
        let absent_device =
            |group: &str| schema::device_kind(group).is_some() && line.get(group).is_none();
        for path in paths {
            if path.first().is_some_and(|g| absent_device(g)) {
                continue;
            }
            let ours = lookup(line, &path);
            assert!(ours.is_some(), "missing {}", path.join("."));
            let theirs = lookup(&reference, &path).unwrap();
            assert_eq!(
                ours.unwrap().is_object(),
                theirs.is_object(),
                "shape of {}",
                path.join(".")
            );
        }
    }

    /// Every key path of `value` (`["block", "read_agg", "min_us"]`, ...).
    fn key_paths(value: &Value, prefix: &[String], out: &mut Vec<Vec<String>>) {
        if let Some(map) = value.as_object() {
            for (key, child) in map {
                let mut path = prefix.to_vec();
                path.push(key.clone());
                out.push(path.clone());
                key_paths(child, &path, out);
            }
        }
    }

    fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
        path.iter().try_fold(value, |v, key| v.get(key))
    }

    fn kiln_line() -> Value {
        let mut line = Line::new();
        let counters = [
            ("block_rootfs", "read_bytes", 512),
            ("block_data", "read_bytes", 100),
            ("net_eth0", "rx_bytes_count", 7),
            ("net_eth0", "rx_drops", 2),
            ("vcpu", "exit_io_in", 3),
            ("vcpu", "exit_shutdown", 1),
        ];
        for (group, name, total) in counters {
            line.add(&Counter {
                group: group.into(),
                name: name.into(),
                total,
            });
        }
        line.finish(1)
    }

    #[test]
    fn a_line_has_every_key_path_of_firecrackers_line() {
        assert_has_reference_fields(&kiln_line());
    }

    #[test]
    fn per_device_counters_add_to_the_aggregate_and_kilns_own_go_under_kiln() {
        let line = kiln_line();
        assert_eq!(line["block_rootfs"]["read_bytes"], 512);
        assert_eq!(line["block_data"]["read_bytes"], 100);
        assert_eq!(line["block_data"]["write_agg"]["sum_us"], 0);
        assert_eq!(line["block"]["read_bytes"], 612);
        assert_eq!(line["net"]["rx_bytes_count"], 7);
        assert_eq!(line["net_eth0"]["tx_count"], 0);
        assert!(line["net_eth0"].get("rx_drops").is_none());
        assert_eq!(line["kiln"]["net_eth0"]["rx_drops"], 2);
        assert_eq!(line["kiln"]["net"]["rx_drops"], 2);
        assert_eq!(line["vcpu"]["exit_io_in"], 3);
        assert_eq!(line["kiln"]["vcpu"]["exit_shutdown"], 1);
        assert_eq!(line["utc_timestamp_ms"], 1);
    }

    #[test]
    fn latency_aggregate_parts_go_inside_their_field() {
        assert_eq!(
            path("vcpu", "exit_io_in_agg.sum_us"),
            ["vcpu", "exit_io_in_agg", "sum_us"]
        );
        // Not a part of an aggregate, or not an aggregate: Kiln's own.
        assert_eq!(
            path("vcpu", "exit_io_in_agg.avg_us"),
            ["kiln", "vcpu", "exit_io_in_agg.avg_us"]
        );
        assert_eq!(
            path("vcpu", "exit_io_in.sum_us"),
            ["kiln", "vcpu", "exit_io_in.sum_us"]
        );
        assert_eq!(
            path("vcpu", "exit_io_in_agg"),
            ["kiln", "vcpu", "exit_io_in_agg"]
        );
        let mut line = Line::new();
        let part = |group: &str, name: &str, total| Counter {
            group: group.into(),
            name: name.into(),
            total,
        };
        line.add(&part("block_rootfs", "read_agg.sum_us", 40));
        line.add(&part("block_data", "read_agg.sum_us", 2));
        line.set(&part("block_rootfs", "read_agg.max_us", 30));
        let line = line.finish(1);
        assert_eq!(line["block_rootfs"]["read_agg"]["sum_us"], 40);
        assert_eq!(line["block_rootfs"]["read_agg"]["max_us"], 30);
        assert_eq!(line["block"]["read_agg"]["sum_us"], 42);
        // As in Firecracker, the extremes stay per device.
        assert_eq!(line["block"]["read_agg"]["max_us"], 0);
        assert_has_reference_fields(&line);
    }
}

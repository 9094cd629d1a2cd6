//! Sample values for a test event: one value per column, of the column's
//! type, as PostgreSQL itself prints it.
//!
//! For each column a candidate text is chosen from its type's rendering
//! category (after looking through domains): `1` for integers, `12.50` for
//! numeric, `now` for dates and times, `sample` for text, a fresh uuid, a
//! small JSON object, an enum's first label, one-element arrays and
//! composites built from their parts' candidates. The server then casts the
//! candidate to the column's exact type (with its modifier) and prints it
//! back in the session's settings, so what reaches the payload is the text
//! the walsender would send for such a value — and it is rendered by the
//! same conversion as every event's values. A candidate the type refuses
//! (a domain's check, a type walhook has no candidate for) becomes null.
//!
//! It reads the catalog and casts literals; it reads no table row.

use std::collections::HashMap;

use crate::catalog::{JsonKind, TypeRegistry};

/// How deep arrays of composites of arrays… are followed for a candidate.
const MAX_DEPTH: usize = 16;

/// Each column's sample as its text output (`None`: null). `type_names`
/// are the columns' types as `format_type` gives them (with modifiers).
pub(super) async fn texts(
    client: &tokio_postgres::Client,
    column_types: &[u32],
    type_names: &[String],
    types: &TypeRegistry,
) -> Result<Vec<Option<String>>, tokio_postgres::Error> {
    let enums = first_enum_labels(client, &reachable(column_types, types)).await?;
    let mut samples = Vec::with_capacity(column_types.len());
    for (&oid, type_name) in column_types.iter().zip(type_names) {
        let Some(candidate) = candidate(oid, types, &enums, 0) else {
            samples.push(None);
            continue;
        };
        // The type name comes from format_type: quoted where it needs to be.
        // `concat` prints it with the type's output function, as the
        // walsender would (a cast to text differs for some types).
        let cast = format!("SELECT concat($1::text::{type_name})");
        match client.query_one(&cast, &[&candidate]).await {
            Ok(row) => samples.push(row.try_get(0)?),
            // The type refused the candidate: null, as a column may be.
            Err(error) if error.as_db_error().is_some() => {
                tracing::debug!(%type_name, %error, "no sample value for the type; sending null");
                samples.push(None);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(samples)
}

/// The types a sample of `oids` may need: the columns' types, their base
/// types, array elements and composite fields, transitively.
fn reachable(oids: &[u32], types: &TypeRegistry) -> Vec<u32> {
    let mut seen = Vec::new();
    let mut pending = oids.to_vec();
    while let Some(oid) = pending.pop() {
        if oid == 0 || seen.contains(&oid) || seen.len() > 1024 {
            continue;
        }
        seen.push(oid);
        let base = types.base_oid(oid);
        pending.push(base);
        match types.kind(base) {
            JsonKind::Array { element, .. } => pending.push(*element),
            JsonKind::Composite { fields } => pending.extend(fields.iter().map(|(_, oid)| *oid)),
            _ => {}
        }
    }
    seen
}

/// The first label (in sort order) of each enum among `oids`.
async fn first_enum_labels(
    client: &tokio_postgres::Client,
    oids: &[u32],
) -> Result<HashMap<u32, String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT DISTINCT ON (enumtypid) enumtypid, enumlabel::text \
               FROM pg_catalog.pg_enum WHERE enumtypid = ANY($1::oid[]) \
              ORDER BY enumtypid, enumsortorder",
            &[&oids],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// A text the type `oid` accepts, before the server normalises it; `None`
/// when walhook has no candidate for the type.
fn candidate(
    oid: u32,
    types: &TypeRegistry,
    enums: &HashMap<u32, String>,
    depth: usize,
) -> Option<String> {
    if depth > MAX_DEPTH {
        return None;
    }
    let base = types.base_oid(oid);
    if let Some(label) = enums.get(&base) {
        return Some(label.clone());
    }
    let text = match types.kind(base) {
        JsonKind::Bool => "t",
        JsonKind::Number => match base {
            700 | 701 => "1.5",
            1700 => "12.50",
            _ => "1",
        },
        // The input functions of every date and time type take `now`.
        JsonKind::Date | JsonKind::Timestamp | JsonKind::TimestampTz => "now",
        JsonKind::Json | JsonKind::Jsonb => r#"{"sample": true}"#,
        JsonKind::Hstore => r#""sample"=>"value""#,
        JsonKind::Array { element, .. } => {
            // One element; an array of a type without a candidate is empty.
            return Some(match candidate(*element, types, enums, depth + 1) {
                Some(element) => format!("{{{}}}", quoted(&element)),
                None => "{}".to_owned(),
            });
        }
        JsonKind::Composite { fields } => {
            // A field without a candidate is left empty: NULL.
            let fields: Vec<String> = fields
                .iter()
                .map(|(_, field)| {
                    candidate(*field, types, enums, depth + 1)
                        .map(|text| quoted(&text))
                        .unwrap_or_default()
                })
                .collect();
            return Some(format!("({})", fields.join(",")));
        }
        JsonKind::Text => return text_candidate(base),
    };
    Some(text.to_owned())
}

/// Candidates of the types rendered as their text, by oid.
fn text_candidate(oid: u32) -> Option<String> {
    let text = match oid {
        25 | 1042 | 1043 | 19 => "sample",
        18 => "s",
        17 => "\\x73616d706c65",
        26 => "1",
        1083 | 1266 => "now",
        1186 => "1 day 02:03:04",
        2950 => return Some(uuid()),
        869 => "192.0.2.1",
        650 => "192.0.2.0/24",
        829 => "08:00:2b:01:02:03",
        774 => "08:00:2b:01:02:03:04:05",
        790 => "12.50",
        1560 => "1",
        1562 => "101",
        3904 | 3926 => "[1,10)",
        3906 => "[1.5,2.5)",
        3912 => "[2026-01-01,2026-02-01)",
        3908 | 3910 => "[2026-01-01 00:00:00,2026-01-02 00:00:00)",
        600 => "(1,2)",
        603 => "(1,1),(0,0)",
        142 => "<sample/>",
        3614 | 3615 => "sample",
        4072 => "$.sample",
        _ => return None,
    };
    Some(text.to_owned())
}

/// A random (version 4) uuid.
fn uuid() -> String {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut hex = String::with_capacity(36);
    for (index, byte) in bytes.iter().enumerate() {
        if matches!(index, 4 | 6 | 8 | 10) {
            hex.push('-');
        }
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// An array element or composite field, double-quoted as their input
/// functions read it (every type accepts a quoted element).
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for character in text.chars() {
        if matches!(character, '"' | '\\') {
            out.push('\\');
        }
        out.push(character);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_the_rendering_category() {
        let types = TypeRegistry::new();
        let enums = HashMap::from([(90_001, "happy".to_owned())]);
        let of = |oid| candidate(oid, &types, &enums, 0);
        assert_eq!(of(23).as_deref(), Some("1"));
        assert_eq!(of(1700).as_deref(), Some("12.50"));
        assert_eq!(of(1184).as_deref(), Some("now"));
        assert_eq!(of(25).as_deref(), Some("sample"));
        assert_eq!(of(16).as_deref(), Some("t"));
        assert_eq!(of(1007).as_deref(), Some("{\"1\"}"), "int4[]");
        assert_eq!(
            of(199).as_deref(),
            Some(r#"{"{\"sample\": true}"}"#),
            "json[]"
        );
        assert_eq!(
            of(90_001).as_deref(),
            Some("happy"),
            "an enum's first label"
        );
        assert_eq!(of(99_999), None, "a type without a candidate");
        let uuid = of(2950).unwrap();
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
        assert_ne!(of(2950), Some(uuid), "fresh each time");
    }
}

//! What walhook needs to know about column types to render them as JSON.
//!
//! [`TypeRegistry`] caches, per type oid, the [`JsonKind`] that decides how a
//! value of that type is written: the same categories as PostgreSQL's
//! `jsonb_categorize_type` (src/backend/utils/adt/jsonb.c) after looking
//! through domains. [`TypeRegistry::ensure`] loads types from `pg_type` over an
//! ordinary SQL connection together with everything their rendering needs —
//! a domain's final base type, an array's element type and delimiter, a
//! composite's attributes — one query per level of nesting, not per type.
//! The common built-in types are known without a query; a type that is not
//! known renders as text.
//!
//! It does not render values (see `value`) or follow schema changes by
//! itself: the decoder calls [`TypeRegistry::invalidate`] on a pgoutput Type
//! message and then `ensure` again, and a type the catalog no longer has by
//! then keeps what was known of it, so preloading the rule tables' types at
//! start-up protects values of a type dropped soon after its change. Of the
//! non-built-in types whose cast to `json` `to_jsonb` would call, it knows
//! `hstore`'s (an object of strings); any other such type is text here.

use std::collections::{HashMap, HashSet};

use crate::oid::OidMap;

/// How values of a type are written in JSON, as `to_jsonb` writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonKind {
    /// `true` / `false`.
    Bool,
    /// int2, int4, int8, float4, float8, numeric: a JSON number when the
    /// text is one (NaN and infinities become strings).
    Number,
    Date,
    Timestamp,
    TimestampTz,
    /// Parsed and re-emitted the way jsonb normalises it.
    Json,
    /// Its text output is already normal JSON.
    Jsonb,
    /// A true array (not `point` or `name`): its elements' type and the
    /// delimiter its text output uses between elements (`;` for `box`, a space
    /// for `int2vector` / `oidvector`, otherwise usually `,`).
    Array {
        element: u32,
        delimiter: u8,
    },
    /// A composite type's attributes (name, type oid), in attribute order.
    Composite {
        fields: Vec<(String, u32)>,
    },
    /// `hstore` (contrib), which `to_jsonb` renders through its cast to json
    /// (`hstore_to_json`): an object whose values are strings or null.
    Hstore,
    /// Everything else: a JSON string of the text output.
    Text,
}

/// What the registry knows about one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeFacts {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// The final base type when this is a domain; otherwise `oid`.
    pub base_oid: u32,
    /// How values are rendered (of the base type, for a domain).
    pub kind: JsonKind,
}

/// Loading type facts from the catalog failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("looking up column types {oids:?} in pg_type failed")]
    Query {
        oids: Vec<u32>,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl CatalogError {
    /// Whether trying again (on a new connection) could help.
    pub fn is_transient(&self) -> bool {
        match self {
            CatalogError::Query { source, .. } => {
                source.is_closed()
                    || source.code().is_some_and(|code| {
                        // Connection, rollback, resources, operator intervention.
                        matches!(code.code().get(..2), Some("08" | "40" | "53" | "57"))
                    })
            }
        }
    }
}

const INT2VECTOR: u32 = 22;
const OIDVECTOR: u32 = 30;

/// How far a chain of domains over domains is followed.
const MAX_DOMAIN_DEPTH: usize = 64;

/// The JSON kind PostgreSQL gives a built-in scalar type by its oid alone.
fn scalar_kind(oid: u32) -> Option<JsonKind> {
    Some(match oid {
        16 => JsonKind::Bool,
        20 | 21 | 23 | 700 | 701 | 1700 => JsonKind::Number,
        1082 => JsonKind::Date,
        1114 => JsonKind::Timestamp,
        1184 => JsonKind::TimestampTz,
        114 => JsonKind::Json,
        3802 => JsonKind::Jsonb,
        _ => return None,
    })
}

/// Built-in types known without a query: (oid, name, kind). Arrays are
/// (oid, name, element oid, delimiter).
const BUILTIN_SCALARS: &[(u32, &str)] = &[
    (16, "bool"),
    (17, "bytea"),
    (18, "char"),
    (19, "name"),
    (20, "int8"),
    (21, "int2"),
    (23, "int4"),
    (25, "text"),
    (26, "oid"),
    (114, "json"),
    (142, "xml"),
    (600, "point"),
    (603, "box"),
    (650, "cidr"),
    (700, "float4"),
    (701, "float8"),
    (774, "macaddr8"),
    (790, "money"),
    (829, "macaddr"),
    (869, "inet"),
    (1042, "bpchar"),
    (1043, "varchar"),
    (1082, "date"),
    (1083, "time"),
    (1114, "timestamp"),
    (1184, "timestamptz"),
    (1186, "interval"),
    (1266, "timetz"),
    (1560, "bit"),
    (1562, "varbit"),
    (1700, "numeric"),
    (2950, "uuid"),
    (3614, "tsvector"),
    (3615, "tsquery"),
    (3802, "jsonb"),
    (3904, "int4range"),
    (3906, "numrange"),
    (3908, "tsrange"),
    (3910, "tstzrange"),
    (3912, "daterange"),
    (3926, "int8range"),
    (4072, "jsonpath"),
];

const BUILTIN_ARRAYS: &[(u32, &str, u32, u8)] = &[
    (INT2VECTOR, "int2vector", 21, b' '),
    (OIDVECTOR, "oidvector", 26, b' '),
    (143, "_xml", 142, b','),
    (199, "_json", 114, b','),
    (651, "_cidr", 650, b','),
    (775, "_macaddr8", 774, b','),
    (791, "_money", 790, b','),
    (1000, "_bool", 16, b','),
    (1001, "_bytea", 17, b','),
    (1002, "_char", 18, b','),
    (1003, "_name", 19, b','),
    (1005, "_int2", 21, b','),
    (1007, "_int4", 23, b','),
    (1009, "_text", 25, b','),
    (1014, "_bpchar", 1042, b','),
    (1015, "_varchar", 1043, b','),
    (1016, "_int8", 20, b','),
    (1017, "_point", 600, b','),
    (1020, "_box", 603, b';'),
    (1021, "_float4", 700, b','),
    (1022, "_float8", 701, b','),
    (1028, "_oid", 26, b','),
    (1040, "_macaddr", 829, b','),
    (1041, "_inet", 869, b','),
    (1115, "_timestamp", 1114, b','),
    (1182, "_date", 1082, b','),
    (1183, "_time", 1083, b','),
    (1185, "_timestamptz", 1184, b','),
    (1187, "_interval", 1186, b','),
    (1231, "_numeric", 1700, b','),
    (1270, "_timetz", 1266, b','),
    (1561, "_bit", 1560, b','),
    (1563, "_varbit", 1562, b','),
    (2951, "_uuid", 2950, b','),
    (3643, "_tsvector", 3614, b','),
    (3645, "_tsquery", 3615, b','),
    (3807, "_jsonb", 3802, b','),
    (3905, "_int4range", 3904, b','),
    (3907, "_numrange", 3906, b','),
    (3909, "_tsrange", 3908, b','),
    (3911, "_tstzrange", 3910, b','),
    (3913, "_daterange", 3912, b','),
    (3927, "_int8range", 3926, b','),
    (4073, "_jsonpath", 4072, b','),
];

/// The oids of the types a registry knows without a query.
pub fn builtin_oids() -> impl Iterator<Item = u32> {
    BUILTIN_SCALARS
        .iter()
        .map(|&(oid, _)| oid)
        .chain(BUILTIN_ARRAYS.iter().map(|&(oid, ..)| oid))
}

/// A cache of [`TypeFacts`] by type oid.
#[derive(Debug, Clone)]
pub struct TypeRegistry {
    /// Looked up once per column value on the hot path.
    types: OidMap<TypeFacts>,
    /// What [`invalidate`](Self::invalidate) forgot, kept until the next
    /// [`ensure`](Self::ensure): a type dropped after the change that used
    /// it (the walsender sends a Type message before the table's Relation
    /// message) is still rendered as it was, not as text.
    retired: OidMap<TypeFacts>,
}

impl Default for TypeRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// One pg_type row as loaded, before domains are resolved.
enum Loaded {
    Domain { base: u32 },
    Kind(JsonKind),
}

impl TypeRegistry {
    /// A registry that knows the common built-in types.
    pub fn new() -> Self {
        let mut registry = Self::without_builtins();
        for &(oid, name) in BUILTIN_SCALARS {
            registry.insert_builtin(oid, name, scalar_kind(oid).unwrap_or(JsonKind::Text));
        }
        for &(oid, name, element, delimiter) in BUILTIN_ARRAYS {
            registry.insert_builtin(oid, name, JsonKind::Array { element, delimiter });
        }
        registry
    }

    /// A registry that knows nothing until [`ensure`](Self::ensure) loads it
    /// (the tests use it to check the built-in table against the catalog).
    pub fn without_builtins() -> Self {
        TypeRegistry {
            types: OidMap::default(),
            retired: OidMap::default(),
        }
    }

    fn insert_builtin(&mut self, oid: u32, name: &str, kind: JsonKind) {
        self.types.insert(
            oid,
            TypeFacts {
                oid,
                namespace: "pg_catalog".into(),
                name: name.into(),
                base_oid: oid,
                kind,
            },
        );
    }

    #[cfg(test)]
    pub(crate) fn insert_for_test(&mut self, facts: TypeFacts) {
        self.types.insert(facts.oid, facts);
    }

    /// The facts about `oid`, when loaded.
    #[cfg(any(test, feature = "testing"))]
    pub fn get(&self, oid: u32) -> Option<&TypeFacts> {
        self.types.get(&oid)
    }

    /// The final base type of a domain `oid`; `oid` itself for any other
    /// type, and for one not loaded.
    pub fn base_oid(&self, oid: u32) -> u32 {
        self.types.get(&oid).map_or(oid, |facts| facts.base_oid)
    }

    /// How values of `oid` render; [`JsonKind::Text`] when it is not loaded.
    pub fn kind(&self, oid: u32) -> &JsonKind {
        const TEXT: &JsonKind = &JsonKind::Text;
        self.types.get(&oid).map_or(TEXT, |facts| &facts.kind)
    }

    /// Forgets `oid` (a pgoutput Type message says it may have changed), the
    /// domains over it and the non-built-in types it refers to, so that the
    /// next [`ensure`](Self::ensure) reloads them. What the catalog no longer
    /// has by then is restored as it was known.
    pub fn invalidate(&mut self, oid: u32) {
        let builtin: HashSet<u32> = builtin_oids().collect();
        let mut pending = vec![oid];
        let mut seen = HashSet::new();
        while let Some(oid) = pending.pop() {
            if !seen.insert(oid) {
                continue;
            }
            if let Some(facts) = self.types.remove(&oid) {
                pending.extend(referenced(&facts).filter(|oid| !builtin.contains(oid)));
                self.retired.insert(oid, facts);
            }
            let domains = self
                .types
                .values()
                .filter(|facts| facts.base_oid == oid && facts.oid != oid)
                .map(|facts| facts.oid);
            pending.extend(domains.collect::<Vec<_>>());
        }
    }

    /// Loads `oids` and, transitively, the types their rendering needs. Types
    /// already known are not queried again; one query per level of nesting.
    pub async fn ensure(
        &mut self,
        client: &tokio_postgres::Client,
        oids: &[u32],
    ) -> Result<(), CatalogError> {
        let mut loaded: HashMap<u32, (String, String, Loaded)> = HashMap::new();
        let mut asked: HashSet<u32> = HashSet::new();
        // Also the parts of known types that are not known (a field type
        // forgotten by `invalidate` while its composite stayed).
        let mut pending: Vec<u32> = self.unknown(oids);
        while !pending.is_empty() {
            pending.sort_unstable();
            pending.dedup();
            asked.extend(pending.iter().copied());
            let rows = query_types(client, &pending).await?;
            let mut next = Vec::new();
            for row in rows {
                let (oid, namespace, name, facts) = row;
                let refs: Vec<u32> = match &facts {
                    Loaded::Domain { base } => vec![*base],
                    Loaded::Kind(kind) => referenced_by_kind(kind).collect(),
                };
                next.extend(refs.into_iter().filter(|oid| {
                    *oid != 0
                        && !self.types.contains_key(oid)
                        && !asked.contains(oid)
                        && !loaded.contains_key(oid)
                }));
                loaded.insert(oid, (namespace, name, facts));
            }
            pending = next;
        }

        // Resolve domains to their final base type now that every level is in.
        let mut resolved = Vec::with_capacity(loaded.len());
        for (&oid, (namespace, name, facts)) in &loaded {
            let (base_oid, kind) = match facts {
                Loaded::Kind(kind) => (oid, kind.clone()),
                Loaded::Domain { base } => self.resolve_domain(*base, &loaded),
            };
            resolved.push(TypeFacts {
                oid,
                namespace: namespace.clone(),
                name: name.clone(),
                base_oid,
                kind,
            });
        }
        for facts in resolved {
            self.types.insert(facts.oid, facts);
        }
        // Asked for, gone from the catalog (dropped since), but known before:
        // keep rendering it as before, and what it refers to.
        let mut restore: Vec<u32> = asked
            .into_iter()
            .filter(|oid| !self.types.contains_key(oid))
            .collect();
        while let Some(oid) = restore.pop() {
            if self.types.contains_key(&oid) {
                continue;
            }
            if let Some(facts) = self.retired.remove(&oid) {
                restore.extend(referenced(&facts));
                self.types.insert(oid, facts);
            }
        }
        self.retired.clear();
        Ok(())
    }

    /// The types among `oids`, or among the types their rendering refers to,
    /// that the registry does not know: their values go out as text.
    pub fn unknown(&self, oids: &[u32]) -> Vec<u32> {
        let mut unknown = Vec::new();
        let mut pending: Vec<u32> = oids.to_vec();
        let mut seen = HashSet::new();
        while let Some(oid) = pending.pop() {
            if oid == 0 || !seen.insert(oid) {
                continue;
            }
            match self.types.get(&oid) {
                Some(facts) => pending.extend(referenced(facts)),
                None => unknown.push(oid),
            }
        }
        unknown.sort_unstable();
        unknown
    }

    /// Follows a chain of domains from `base` to a type that is not one.
    fn resolve_domain(
        &self,
        mut base: u32,
        loaded: &HashMap<u32, (String, String, Loaded)>,
    ) -> (u32, JsonKind) {
        for _ in 0..MAX_DOMAIN_DEPTH {
            if let Some(facts) = self.types.get(&base) {
                return (facts.base_oid, facts.kind.clone());
            }
            match loaded.get(&base) {
                Some((_, _, Loaded::Kind(kind))) => return (base, kind.clone()),
                Some((_, _, Loaded::Domain { base: next })) => base = *next,
                None => break,
            }
        }
        (base, JsonKind::Text)
    }
}

/// The type oids a type's rendering refers to.
fn referenced(facts: &TypeFacts) -> impl Iterator<Item = u32> + '_ {
    let base = (facts.base_oid != facts.oid).then_some(facts.base_oid);
    base.into_iter().chain(referenced_by_kind(&facts.kind))
}

fn referenced_by_kind(kind: &JsonKind) -> Box<dyn Iterator<Item = u32> + '_> {
    match kind {
        JsonKind::Array { element, .. } => Box::new(std::iter::once(*element)),
        JsonKind::Composite { fields } => Box::new(fields.iter().map(|(_, oid)| *oid)),
        _ => Box::new(std::iter::empty()),
    }
}

/// One level of the look-up: the pg_type rows for `oids`, with the element's
/// delimiter and the composite's live attributes in the same row.
/// `typsubscript` exists from PostgreSQL 14; reading it through `to_jsonb`
/// keeps the query valid on older servers, where an array is a varlena type
/// with an element type.
const TYPES_QUERY: &str = "\
SELECT t.oid, n.nspname::text, t.typname::text, t.typtype, t.typlen, t.typelem,
       to_jsonb(t) ->> 'typsubscript',
       coalesce((SELECT e.typdelim FROM pg_catalog.pg_type e WHERE e.oid = t.typelem), ','::\"char\"),
       t.typbasetype,
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum),
       ARRAY(SELECT a.atttypid FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum),
       (SELECT p.proname::text FROM pg_catalog.pg_cast c
          JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc
         WHERE c.castsource = t.oid AND c.casttarget = 'pg_catalog.json'::pg_catalog.regtype
           AND c.castmethod = 'f')
  FROM pg_catalog.pg_type t
  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
 WHERE t.oid = ANY($1::oid[])";

async fn query_types(
    client: &tokio_postgres::Client,
    oids: &[u32],
) -> Result<Vec<(u32, String, String, Loaded)>, CatalogError> {
    let error = |source| CatalogError::Query {
        oids: oids.to_vec(),
        source,
    };
    let rows = client.query(TYPES_QUERY, &[&oids]).await.map_err(error)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let oid: u32 = row.try_get(0).map_err(error)?;
        let namespace: String = row.try_get(1).map_err(error)?;
        let name: String = row.try_get(2).map_err(error)?;
        let typtype = row.try_get::<_, i8>(3).map_err(error)? as u8;
        let typlen: i16 = row.try_get(4).map_err(error)?;
        let typelem: u32 = row.try_get(5).map_err(error)?;
        let subscript: Option<String> = row.try_get(6).map_err(error)?;
        let delimiter = row.try_get::<_, i8>(7).map_err(error)? as u8;
        let typbasetype: u32 = row.try_get(8).map_err(error)?;
        let names: Vec<String> = row.try_get(9).map_err(error)?;
        let types: Vec<u32> = row.try_get(10).map_err(error)?;
        // `to_jsonb` calls a non-built-in type's cast to json, if it has one.
        let cast_to_json: Option<String> = row.try_get(11).map_err(error)?;

        let is_array = typelem != 0
            && match subscript.as_deref() {
                Some(handler) => handler == "array_subscript_handler",
                None => typlen == -1,
            };
        let loaded = if typtype == b'd' && typbasetype != 0 {
            Loaded::Domain { base: typbasetype }
        } else if let Some(kind) = scalar_kind(oid) {
            Loaded::Kind(kind)
        } else if cast_to_json.as_deref() == Some("hstore_to_json") {
            Loaded::Kind(JsonKind::Hstore)
        } else if is_array {
            // int2vector and oidvector print their elements space-separated.
            let delimiter = if oid == INT2VECTOR || oid == OIDVECTOR {
                b' '
            } else {
                delimiter
            };
            Loaded::Kind(JsonKind::Array {
                element: typelem,
                delimiter,
            })
        } else if typtype == b'c' {
            Loaded::Kind(JsonKind::Composite {
                fields: names.into_iter().zip(types).collect(),
            })
        } else {
            Loaded::Kind(JsonKind::Text)
        };
        out.push((oid, namespace, name, loaded));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_known_without_a_query() {
        let types = TypeRegistry::new();
        assert_eq!(types.kind(16), &JsonKind::Bool);
        assert_eq!(types.kind(1700), &JsonKind::Number);
        assert_eq!(types.kind(1184), &JsonKind::TimestampTz);
        assert_eq!(types.kind(26), &JsonKind::Text, "oid renders as text");
        assert_eq!(types.kind(1083), &JsonKind::Text, "time renders as text");
        assert_eq!(
            types.kind(1020),
            &JsonKind::Array {
                element: 603,
                delimiter: b';'
            }
        );
        assert_eq!(types.get(1007).map(|t| t.name.as_str()), Some("_int4"));
    }

    #[test]
    fn unknown_types_render_as_text() {
        let types = TypeRegistry::new();
        assert!(types.get(99_999).is_none());
        assert_eq!(types.kind(99_999), &JsonKind::Text);
    }

    #[test]
    fn invalidate_forgets_the_type_its_domains_and_its_parts() {
        let mut types = TypeRegistry::new();
        let facts = |oid, base_oid, kind| TypeFacts {
            oid,
            namespace: "public".into(),
            name: format!("t{oid}"),
            base_oid,
            kind,
        };
        let composite = JsonKind::Composite {
            fields: vec![("a".into(), 23), ("b".into(), 50_002)],
        };
        types
            .types
            .insert(50_001, facts(50_001, 50_001, composite.clone()));
        types
            .types
            .insert(50_002, facts(50_002, 50_002, JsonKind::Text));
        types.types.insert(50_003, facts(50_003, 50_001, composite));
        types
            .types
            .insert(50_004, facts(50_004, 50_004, JsonKind::Text));
        types.invalidate(50_001);
        assert!(types.get(50_001).is_none());
        assert!(types.get(50_002).is_none(), "a part is reloaded too");
        assert!(
            types.get(50_003).is_none(),
            "a domain over it is reloaded too"
        );
        assert!(types.get(50_004).is_some(), "unrelated types stay");
        assert!(types.get(23).is_some(), "built-ins stay");
    }
}

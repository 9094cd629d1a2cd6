//! What comparing as jsonb cannot see: jsonb has no negative zero, so
//! `'-0'::jsonb = '0'::jsonb`, and a rendering that writes `-0` where
//! `to_jsonb` gives `0` would pass a jsonb comparison. The oracle tests use
//! this alongside it, on values that are already equal as jsonb.

use serde_json::Value;

/// Where `ours` and `oracle` (equal as jsonb) hold numbers of different
/// sign, as `path: ours …, oracle …` lines; empty when they agree.
pub fn sign_differences(ours: &Value, oracle: &Value) -> Vec<String> {
    let mut found = Vec::new();
    walk(ours, oracle, String::new(), &mut found);
    found
}

fn walk(ours: &Value, oracle: &Value, path: String, found: &mut Vec<String>) {
    match (ours, oracle) {
        (Value::Number(ours), Value::Number(oracle)) => {
            // Equal in value, so only a zero can differ in sign. The text
            // tells (serde_json keeps a `-0` as written, or as -0.0).
            let negative = |number: &serde_json::Number| number.to_string().starts_with('-');
            if negative(ours) != negative(oracle) {
                found.push(format!("{path}: ours {ours}, oracle {oracle}"));
            }
        }
        (Value::Array(ours), Value::Array(oracle)) => {
            for (index, (ours, oracle)) in ours.iter().zip(oracle).enumerate() {
                walk(ours, oracle, format!("{path}[{index}]"), found);
            }
        }
        (Value::Object(ours), Value::Object(oracle)) => {
            for (key, oracle) in oracle {
                if let Some(ours) = ours.get(key) {
                    walk(ours, oracle, format!("{path}.{key}"), found);
                }
            }
        }
        _ => {}
    }
}

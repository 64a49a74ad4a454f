//! Prints the JSON Schema of every bus message as one JSON object keyed by
//! message name: `cargo run -p bus-schema > schemas.json`.

fn main() {
    let all: serde_json::Map<String, serde_json::Value> = bus_schema::schema::all()
        .into_iter()
        .map(|(name, schema)| (name.to_string(), schema.to_value()))
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::Value::Object(all)).expect("schemas serialize")
    );
}

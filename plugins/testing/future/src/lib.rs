//! Exports `portcullis:provider/plugin@2.0.0`, which no current host supports.

wit_bindgen::generate!({ path: "wit", world: "provider" });

struct Future;

impl exports::portcullis::provider::plugin::Guest for Future {
    fn describe() -> String {
        "from the future".to_owned()
    }
}

export!(Future);

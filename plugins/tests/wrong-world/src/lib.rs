//! Test component of another world (`other:thing/gadget`): the host must
//! refuse to load it as a vendor plugin with a clear error.

wit_bindgen::generate!({ world: "gadget", path: "wit" });

struct Gadget;

export!(Gadget);

impl Guest for Gadget {
    fn run() -> String {
        "not a vendor plugin".into()
    }
}

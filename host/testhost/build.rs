//! Links the test host at its fixed physical address with `testhost.ld`, and
//! embeds the test guests' flat binaries.
//!
//! `RAMPART_GUEST_DIR` (set by `cargo xtask`, which builds the guests first)
//! names a directory of `<name>.bin` files; each known guest found there is
//! embedded with `include_bytes!` in `$OUT_DIR/guests.rs`. Without the
//! variable the table is empty and the VM checks fail with "built without
//! guests".

use std::fmt::Write as _;
use std::path::Path;

/// The guests the VM checks run (`xtask/src/guests.rs` builds them).
const GUESTS: [&str; 6] = ["hello", "memtest", "share", "smp", "timer", "attacker"];

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = format!("{dir}/testhost.ld");
    println!("cargo:rustc-link-arg-bins=-T{script}");
    println!("cargo:rerun-if-changed={script}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RAMPART_GUEST_DIR");

    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let mut table = String::from(
        "/// The embedded test guests: `(name, flat binary)`.\npub static GUESTS: &[(&str, &[u8])] = &[\n",
    );
    let mut source = String::from("none (RAMPART_GUEST_DIR unset)");
    if let Ok(guest_dir) = std::env::var("RAMPART_GUEST_DIR") {
        let guest_dir = Path::new(&guest_dir);
        println!("cargo:rerun-if-changed={}", guest_dir.display());
        source = guest_dir.display().to_string();
        for name in GUESTS {
            let file = guest_dir.join(format!("{name}.bin"));
            println!("cargo:rerun-if-changed={}", file.display());
            if file.is_file() {
                let path = file.canonicalize().expect("canonical guest path");
                writeln!(table, "    ({name:?}, include_bytes!({:?})),", path.display().to_string())
                    .expect("writing to a String");
            }
        }
    }
    table.push_str("];\n");
    writeln!(table, "/// Where the guests came from.\npub const GUEST_SOURCE: &str = {source:?};")
        .expect("writing to a String");
    std::fs::write(Path::new(&out).join("guests.rs"), table).expect("writing guests.rs");
}

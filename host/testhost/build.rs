//! Links the test host at its fixed physical address with `testhost.ld`, and
//! embeds the test guests' flat binaries and signed bundles.
//!
//! `RAMPART_GUEST_DIR` (set by `cargo xtask`, which builds and signs the
//! guests first) names a directory of `<name>.bin` files and their signed
//! `<name>.bundle`s (`docs/formats.md`), plus `hello.untrusted.bundle` (the
//! `hello` guest signed by a key the hypervisor does not trust); each known
//! guest found there is embedded with `include_bytes!` in
//! `$OUT_DIR/guests.rs`. A bundle whose image is not the `.bin` stops the
//! build. Without the variable the table is empty and the VM checks fail
//! with "built without guests".

use std::fmt::Write as _;
use std::path::Path;

/// The guests the VM checks run (`xtask/src/guests.rs` builds them).
const GUESTS: [&str; 11] = ["hello", "memtest", "share", "smp", "timer", "attacker", "attest", "spin", "fuzz", "count", "realm"];
/// Where a bundle's image starts (`docs/formats.md`).
const BUNDLE_HEADER: usize = 176;

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = format!("{dir}/testhost.ld");
    println!("cargo:rustc-link-arg-bins=-T{script}");
    println!("cargo:rerun-if-changed={script}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RAMPART_GUEST_DIR");

    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let mut table = String::from(
        "/// The embedded test guests: `(name, flat binary, signed bundle or empty)`.\npub static GUESTS: &[(&str, &[u8], &[u8])] = &[\n",
    );
    let mut source = String::from("none (RAMPART_GUEST_DIR unset)");
    let mut untrusted = String::from("&[]");
    if let Ok(guest_dir) = std::env::var("RAMPART_GUEST_DIR") {
        let guest_dir = Path::new(&guest_dir);
        println!("cargo:rerun-if-changed={}", guest_dir.display());
        source = guest_dir.display().to_string();
        for name in GUESTS {
            let file = guest_dir.join(format!("{name}.bin"));
            println!("cargo:rerun-if-changed={}", file.display());
            if file.is_file() {
                let path = file.canonicalize().expect("canonical guest path");
                let bundle = embed_bundle(guest_dir, &format!("{name}.bundle"), Some(&path));
                writeln!(
                    table,
                    "    ({name:?}, include_bytes!({:?}), {bundle}),",
                    path.display().to_string()
                )
                .expect("writing to a String");
            }
        }
        let hello = guest_dir.join("hello.bin");
        if hello.is_file() {
            untrusted = embed_bundle(guest_dir, "hello.untrusted.bundle", Some(&hello));
        }
    }
    table.push_str("];\n");
    writeln!(
        table,
        "/// The `hello` guest signed by a key the hypervisor does not trust (or empty).\npub static UNTRUSTED_HELLO: &[u8] = {untrusted};"
    )
    .expect("writing to a String");
    writeln!(table, "/// Where the guests came from.\npub const GUEST_SOURCE: &str = {source:?};")
        .expect("writing to a String");
    std::fs::write(Path::new(&out).join("guests.rs"), table).expect("writing guests.rs");
}

/// `include_bytes!(<dir>/<file>)` if the bundle exists (after checking its
/// image is the `.bin` at `image`), else `&[]`.
fn embed_bundle(dir: &Path, file: &str, image: Option<&Path>) -> String {
    let path = dir.join(file);
    println!("cargo:rerun-if-changed={}", path.display());
    if !path.is_file() {
        return "&[]".into();
    }
    let bundle = std::fs::read(&path).expect("reading a bundle");
    if let Some(image) = image {
        let bin = std::fs::read(image).expect("reading a guest image");
        assert!(
            bundle.len() >= BUNDLE_HEADER && bundle[BUNDLE_HEADER..] == bin[..],
            "{}: its image is not {} (rebuild with `cargo xtask build`)",
            path.display(),
            image.display()
        );
    }
    let path = path.canonicalize().expect("canonical bundle path");
    format!("include_bytes!({:?})", path.display().to_string())
}

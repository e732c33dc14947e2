//! Checks that `docs/abi.md` documents every call and error code in
//! `crates/abi` with the same value.

#[cfg(test)]
mod tests {
    use rampart_abi::Error;
    use rampart_abi::host::HostCall;

    fn abi_md() -> String {
        let path = crate::artifacts::root().join("docs/abi.md");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The table row that starts with `| \`name\` |`.
    fn row<'a>(doc: &'a str, name: &str) -> Option<&'a str> {
        let start = format!("| `{name}` |");
        doc.lines().find(|l| l.starts_with(&start))
    }

    #[test]
    fn every_host_call_is_documented_with_its_id() {
        let doc = abi_md();
        for call in HostCall::ALL {
            let line = row(&doc, call.name()).unwrap_or_else(|| panic!("docs/abi.md lacks {}", call.name()));
            let id = format!("`{:#010X}`", call.id()).replace("0X", "0x");
            assert!(line.contains(&id), "{}: docs/abi.md row `{line}` lacks {id}", call.name());
        }
    }

    #[test]
    fn every_guest_call_is_documented_with_its_id() {
        let doc = abi_md();
        for call in rampart_abi::guest::GuestCall::ALL {
            let line = row(&doc, call.name()).unwrap_or_else(|| panic!("docs/abi.md lacks {}", call.name()));
            let id = format!("`{:#010X}`", call.id()).replace("0X", "0x");
            assert!(line.contains(&id), "{}: docs/abi.md row `{line}` lacks {id}", call.name());
        }
    }

    #[test]
    fn every_rsi_call_is_documented_with_its_id() {
        let doc = abi_md();
        for call in rampart_abi::rsi::RsiCall::ALL {
            let line = row(&doc, call.name()).unwrap_or_else(|| panic!("docs/abi.md lacks {}", call.name()));
            let id = format!("`{:#010X}`", call.id()).replace("0X", "0x");
            assert!(line.contains(&id), "{}: docs/abi.md row `{line}` lacks {id}", call.name());
        }
    }

    #[test]
    fn every_exit_reason_is_documented_with_its_value() {
        let doc = abi_md();
        for reason in rampart_abi::host::ExitReason::ALL {
            let line = row(&doc, reason.name()).unwrap_or_else(|| panic!("docs/abi.md lacks {}", reason.name()));
            assert!(line.contains(&format!("| {} |", reason as u64)), "{}: row `{line}`", reason.name());
        }
    }

    #[test]
    fn every_error_code_is_documented_with_its_value() {
        let doc = abi_md();
        for error in Error::ALL {
            let line = row(&doc, error.name()).unwrap_or_else(|| panic!("docs/abi.md lacks {}", error.name()));
            assert!(line.contains(&format!("| {} |", error.code())), "{}: row `{line}`", error.name());
        }
    }

    #[test]
    fn control_page_offsets_and_version_are_documented() {
        use rampart_abi::boot::control;
        let doc = abi_md();
        for (what, offset) in [("doorbell", control::DOORBELL), ("`CALL`", control::CALL), ("`BIND`", control::BIND)] {
            let text = format!("offset `{offset:#x}`");
            assert!(doc.contains(&text), "docs/abi.md lacks the {what} at {text}");
        }
        let version = format!("host ABI version is **{}.{}**", rampart_abi::host::ABI_VERSION_MAJOR, rampart_abi::host::ABI_VERSION_MINOR);
        assert!(doc.contains(&version), "docs/abi.md does not say `{version}`");
        let since = format!("Call pages (host ABI 0.{})", control::CALL_PAGE_ABI_MINOR);
        assert!(doc.contains(&since), "docs/abi.md lacks `{since}`");
    }
}

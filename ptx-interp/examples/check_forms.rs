//! Lists the opcode forms of PTX files that the interpreter does not support:
//! `cargo run -p ptx-interp --example check_forms -- file.ptx ...`
fn main() {
    let allow = ptx_interp::supported_opcode_forms();
    for path in std::env::args().skip(1) {
        let src = std::fs::read_to_string(&path).unwrap();
        // scan line by line so that every unsupported form is listed, not only the first
        let mut missing = std::collections::BTreeSet::new();
        for line in src.lines() {
            let t = line.trim().trim_start_matches('{').trim();
            let t = if t.starts_with('@') {
                t.split_once(char::is_whitespace)
                    .map(|x| x.1.trim())
                    .unwrap_or("")
            } else {
                t
            };
            let op = t
                .split(|c: char| c.is_whitespace() || c == ';')
                .next()
                .unwrap_or("");
            if op.is_empty()
                || op.starts_with('.')
                || op.starts_with("//")
                || op.starts_with('$')
                || op.ends_with(':')
                || op.starts_with('}')
                || op.starts_with(')')
            {
                continue;
            }
            if op.chars().next().unwrap().is_ascii_lowercase() && !allow.contains(op) {
                missing.insert(op.to_string());
            }
        }
        println!(
            "{path}: {} unsupported form(s): {:?}",
            missing.len(),
            missing
        );
        match ptx_interp::Module::parse(&src) {
            Ok(m) => println!("  parses: kernels {:?}", m.kernel_names()),
            Err(e) => println!("  parse error: {e}"),
        }
    }
}

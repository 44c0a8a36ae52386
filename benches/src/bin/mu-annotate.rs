//! `mu-annotate`: where a probe's instructions go, machine instruction by machine instruction.
//!
//! ```text
//! mu-annotate leader_commit_64b_3r                  # the 5 functions with the most of their own
//! mu-annotate leader_commit_64b_3r --function propose
//! ```
//!
//! `mu-bench instructions` tells how many instructions a hot path executes and which functions
//! own them; this shows, for the functions that own the most, each machine instruction the
//! probe executed with how many times per operation, next to `objdump`'s disassembly. That is
//! the view a diet needs: a cost spread over a function's source lines (an overflow check, a
//! bounds assertion, a multiplication recomputed, a call's argument shuffling) shows as what
//! it is.
//!
//! The probe (`mu-bench probe`, from the `mu-bench` binary next to this one: the binary whose
//! counts `mu-bench instructions` reports; this is a binary of its own so that its code does
//! not move how the probe's code is compiled, which adding it to `mu-bench` did, by 22
//! instructions of the leader's commit) runs under `valgrind --tool=callgrind
//! --dump-instr=yes`; [`parse`] reads the output's cost lines (their positions are an
//! instruction address and a source line, each absolute or relative to the previous line's) and
//! sums each function's costs per address; the call lines' costs (a callee's inclusive cost, at
//! the call's address) are left out, so a function's addresses add up to its own cost as
//! `callgrind_annotate --inclusive=no` counts it.
//!
//! # Invariants
//! - Every failure is a message on stderr and exit status 1.
//! - Every cost counted is a cost line's own, in the function current at that line.
//! - A function is shown only when its costed addresses are instructions of the disassembly:
//!   addresses that fall inside instructions mean the two disagree on where the code is, and
//!   that is reported, not printed as if it matched. A function in another object (the C
//!   library) is listed with its cost and its object, never disassembled from the probe's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Parser;
use mu_benches::instructions::{self, Scenario};

#[derive(Parser)]
#[command(
    name = "mu-annotate",
    about = "One instruction-count scenario, machine instruction by machine instruction, for the \
             functions that execute the most of their own (callgrind and objdump)"
)]
struct Cli {
    /// The scenario, as `mu-bench instructions` names it (leader_commit_64b_3r, ...).
    scenario: String,
    /// Only the functions whose name contains this.
    #[arg(long)]
    function: Option<String>,
    /// Without --function: how many functions, those with the most of their own first.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Measured calls.
    #[arg(long, default_value_t = 1000)]
    iterations: u64,
    /// The binary with the probe (default: `mu-bench` next to this binary).
    #[arg(long)]
    probe: Option<PathBuf>,
    /// Scratch files (the callgrind output).
    #[arg(long, default_value = "target/bench")]
    work: PathBuf,
}

fn main() -> ExitCode {
    match run(&Cli::parse()) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mu-annotate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<String, String> {
    let scenario = Scenario::parse(&cli.scenario).ok_or_else(|| {
        format!(
            "no scenario `{}`; scenarios: {}",
            cli.scenario,
            Scenario::ALL.map(Scenario::name).join(", ")
        )
    })?;
    let probe_exe = match &cli.probe {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this binary: {e}"))?
            .with_file_name("mu-bench"),
    };
    if !probe_exe.is_file() {
        return Err(format!(
            "{}: no such binary (build it: cargo build --release -p mu-benches)",
            probe_exe.display()
        ));
    }
    std::fs::create_dir_all(&cli.work).map_err(|e| format!("{}: {e}", cli.work.display()))?;
    annotate(cli, scenario, &probe_exe)
}

/// One function's own instruction counts, per instruction address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FunctionCosts {
    /// The function's name as callgrind gives it (demangled).
    name: String,
    /// The binary or library the function's code is in, as callgrind names it.
    object: String,
    /// Instructions executed at each address, over the whole run.
    at: BTreeMap<u64, u64>,
}

impl FunctionCosts {
    /// Instructions executed in the function itself, over the whole run.
    fn total(&self) -> u64 {
        self.at.values().sum()
    }
}

/// Reads a callgrind output file written with `--dump-instr=yes`: each function's own costs
/// per instruction address, functions in order of first appearance.
fn parse(text: &str) -> Result<Vec<FunctionCosts>, String> {
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut objects: BTreeMap<String, String> = BTreeMap::new();
    let mut object = String::new();
    let mut functions: Vec<FunctionCosts> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut current: Option<usize> = None;
    let (mut address, mut call_cost_next) = (0u64, false);
    let mut instr_positions = false;
    for (number, line) in text.lines().enumerate() {
        let at = || format!("line {}", number + 1);
        if let Some(positions) = line.strip_prefix("positions:") {
            instr_positions = positions.split_whitespace().next() == Some("instr");
            continue;
        }
        if let Some(spec) = line.strip_prefix("ob=") {
            object = function_name(spec, &mut objects);
            continue;
        }
        if let Some(spec) = line.strip_prefix("cob=") {
            function_name(spec, &mut objects); // Objects may be defined where they are called.
            continue;
        }
        if let Some(spec) = line.strip_prefix("fn=") {
            let name = function_name(spec, &mut names);
            let next = index.len();
            let slot = *index.entry(name.clone()).or_insert(next);
            if slot == functions.len() {
                functions.push(FunctionCosts {
                    name,
                    object: object.clone(),
                    at: BTreeMap::new(),
                });
            }
            current = Some(slot);
            continue;
        }
        if let Some(spec) = line.strip_prefix("cfn=") {
            function_name(spec, &mut names); // Names may be defined where they are called.
            continue;
        }
        if line.starts_with("calls=") {
            call_cost_next = true;
            continue;
        }
        let Some(first) = line.bytes().next() else {
            continue;
        };
        if !(first.is_ascii_digit() || first == b'+' || first == b'-' || first == b'*') {
            continue; // Headers, file and object lines, totals.
        }
        if !instr_positions {
            return Err(format!(
                "{}: cost lines without instruction addresses: run callgrind with --dump-instr=yes",
                at()
            ));
        }
        let mut fields = line.split_whitespace();
        let position = fields.next().unwrap_or("*");
        address =
            next_address(position, address).ok_or_else(|| format!("{}: bad address", at()))?;
        let cost = fields.nth(1).and_then(|c| c.parse::<u64>().ok());
        if std::mem::take(&mut call_cost_next) {
            continue; // A callee's inclusive cost, not this function's own.
        }
        let (Some(slot), Some(cost)) = (current, cost) else {
            return Err(format!("{}: a cost outside a function, or no cost", at()));
        };
        *functions[slot].at.entry(address).or_insert(0) += cost;
    }
    Ok(functions)
}

/// The name a `fn=`, `cfn=`, `ob=` or `cob=` specification names: `(id) name` defines `id`, `(id)` refers to
/// it, and a bare name is itself (uncompressed output).
fn function_name(spec: &str, names: &mut BTreeMap<String, String>) -> String {
    let Some(rest) = spec.strip_prefix('(') else {
        return spec.to_owned();
    };
    let Some((id, name)) = rest.split_once(')') else {
        return spec.to_owned();
    };
    let name = name.trim();
    if !name.is_empty() {
        names.insert(id.to_owned(), name.to_owned());
    }
    names.get(id).cloned().unwrap_or_else(|| format!("({id})"))
}

/// An instruction position: `0x…` absolute, `+n` or `-n` relative (decimal), `*` the same.
fn next_address(position: &str, previous: u64) -> Option<u64> {
    if let Some(hex) = position.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok();
    }
    if position == "*" {
        return Some(previous);
    }
    if let Some(up) = position.strip_prefix('+') {
        return previous.checked_add(up.parse().ok()?);
    }
    if let Some(down) = position.strip_prefix('-') {
        return previous.checked_sub(down.parse().ok()?);
    }
    position.parse().ok()
}

/// `objdump`'s disassembly of `exe` from `start` to `end`: each instruction's address and text.
fn disassemble(exe: &Path, start: u64, end: u64) -> Result<Vec<(u64, String)>, String> {
    let output = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", "-C"])
        .arg(format!("--start-address={start:#x}"))
        .arg(format!("--stop-address={end:#x}"))
        .arg(exe)
        .output()
        .map_err(|e| format!("cannot run objdump ({e}); install binutils"))?;
    if !output.status.success() {
        return Err(format!(
            "objdump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (address, text) = line.trim_start().split_once(":\t")?;
            let address = u64::from_str_radix(address, 16).ok()?;
            Some((
                address,
                text.split_whitespace().collect::<Vec<_>>().join(" "),
            ))
        })
        .collect())
}

/// Each costed instruction of `function` in `exe`, as `per op  address  instruction` lines;
/// for a function in another object (the C library's `memcpy`), a line saying so.
fn annotate_function(
    exe: &Path,
    function: &FunctionCosts,
    iterations: u64,
) -> Result<String, String> {
    if !same_file(Path::new(&function.object), exe) {
        return Ok(format!("   (in {}: not disassembled)\n", function.object));
    }
    let (Some((&start, _)), Some((&last, _))) =
        (function.at.first_key_value(), function.at.last_key_value())
    else {
        return Ok(String::new());
    };
    // An x86-64 instruction is at most 15 bytes long.
    let instructions = disassemble(exe, start, last + 16)?;
    let known: usize = instructions
        .iter()
        .filter(|(address, _)| function.at.contains_key(address))
        .count();
    if known != function.at.len() {
        return Err(format!(
            "{}: {} of its {} costed addresses are not instructions in objdump's disassembly \
             (another binary than the one callgrind ran?)",
            function.name,
            function.at.len() - known,
            function.at.len()
        ));
    }
    let mut text = String::new();
    for (address, instruction) in instructions {
        if let Some(&cost) = function.at.get(&address) {
            let per_op = cost as f64 / iterations as f64;
            writeln!(text, "{per_op:9.1}  {address:8x}  {instruction}").expect("to a String");
        }
    }
    Ok(text)
}

/// Whether `a` and `b` name the same file (callgrind names objects by absolute path).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Runs `scenario`'s probe in `probe_exe` under callgrind and annotates the instructions of
/// the functions `cli` asks for.
fn annotate(cli: &Cli, scenario: Scenario, probe_exe: &Path) -> Result<String, String> {
    let out = cli
        .work
        .join(format!("callgrind.{}.instr.out", scenario.name()));
    instructions::callgrind(
        probe_exe,
        scenario,
        cli.iterations,
        &out,
        &["--dump-instr=yes"],
    )?;
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut functions = parse(&text)?;
    functions.retain(|f| f.total() > 0);
    if functions.is_empty() {
        return Err(format!(
            "callgrind counted nothing inside the probe's measured calls: is {} mu-bench?",
            probe_exe.display()
        ));
    }
    functions.sort_by_key(|f| std::cmp::Reverse(f.total()));
    let total: u64 = functions.iter().map(FunctionCosts::total).sum();
    let chosen: Vec<&FunctionCosts> = match cli.function.as_deref() {
        Some(pattern) => functions
            .iter()
            .filter(|f| f.name.contains(pattern))
            .collect(),
        None => functions.iter().take(cli.top).collect(),
    };
    if chosen.is_empty() {
        let names: Vec<&str> = functions.iter().map(|f| f.name.as_str()).collect();
        return Err(format!(
            "no function matches; the probe's functions: {}",
            names.join("; ")
        ));
    }
    let per_op = |ir: u64| ir as f64 / cli.iterations as f64;
    let mut report = format!(
        "{}: {:.1} instructions per operation; per function, its own, per instruction executed \
         (per operation, address, instruction):\n",
        scenario.name(),
        per_op(total)
    );
    for function in chosen {
        let body = annotate_function(probe_exe, function, cli.iterations)?;
        write!(
            report,
            "\n{}: {:.1}\n{body}",
            function.name,
            per_op(function.total())
        )
        .expect("to a String");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape callgrind writes: compressed names (defined at `fn=` or `cfn=`), relative
    /// positions, inlined files, and a call whose inclusive cost is not the caller's own.
    const OUT: &str = "\
version: 1
creator: callgrind-3.19.0
positions: instr line
events: Ir

ob=(1) /bin/probe
fl=(1) a.rs
fn=(1) caller
0x1000 10 1
+2 * 1
fi=(2) b.rs
+3 40 2
cfn=(2) callee
calls=1 0x2000 5
+4 * 100
fe=(1)
+5 11 1

fn=(2)
0x2000 5 7
-0 * 3
+1 6 90

fn=(1)
0x1000 10 1

ob=(2) /lib/libc.so
fn=(3) memcpy
0x9000 1 4
totals: 209
";

    #[test]
    fn costs_add_up_per_function_and_address_without_callees() {
        let functions = parse(OUT).expect("parses");
        let names: Vec<&str> = functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["caller", "callee", "memcpy"]);
        let objects: Vec<&str> = functions.iter().map(|f| f.object.as_str()).collect();
        assert_eq!(objects, ["/bin/probe", "/bin/probe", "/lib/libc.so"]);
        let caller = &functions[0];
        // 0x1000 twice (two blocks), 0x1002, 0x1005; the call at 0x1009 is the callee's cost;
        // the line after it is relative to the call's address.
        let expected: BTreeMap<u64, u64> =
            [(0x1000, 2), (0x1002, 1), (0x1005, 2), (0x100e, 1)].into();
        assert_eq!(caller.at, expected);
        assert_eq!(caller.total(), 6);
        let callee = &functions[1];
        assert_eq!(callee.at, [(0x2000, 10), (0x2001, 90)].into());
    }

    #[test]
    fn output_without_instruction_addresses_is_refused() {
        let text = OUT.replace("positions: instr line", "positions: line");
        let error = parse(&text).expect_err("no addresses");
        assert!(error.contains("--dump-instr=yes"), "{error}");
    }

    #[test]
    fn positions_are_absolute_hex_or_relative_decimal() {
        assert_eq!(next_address("0x10", 5), Some(16));
        assert_eq!(next_address("+10", 5), Some(15));
        assert_eq!(next_address("-5", 5), Some(0));
        assert_eq!(next_address("*", 5), Some(5));
        assert_eq!(next_address("-6", 5), None);
        assert_eq!(next_address("x", 5), None);
    }
}

/// Metered so that the script host can stop a call before it allocates past its heap limit.
#[global_allocator]
static ALLOCATOR: apigen_mt::domain::script::meter::Metered =
    apigen_mt::domain::script::meter::Metered;

fn main() -> std::process::ExitCode {
    apigen_mt::cli::main()
}

fn main() -> std::process::ExitCode {
    apigen_mt::cli::main()
}

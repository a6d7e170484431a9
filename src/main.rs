fn main() {
    println!("stratafs {}", env!("CARGO_PKG_VERSION"));
}

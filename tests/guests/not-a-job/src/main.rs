//! A wasm32-wasip2 command: a valid component, but not of the fnhost:job world.
fn main() {
    println!("I am a command, not a job");
}

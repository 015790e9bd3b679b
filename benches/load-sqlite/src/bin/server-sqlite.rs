//! `server-sqlite ours-sqlite PORT`: `../load`'s server for our SQLite store, with the same
//! routes, configuration and allocation counting (the same files, included by path). The file
//! is `BENCH_SQLITE_DIR/ours-sqlite.sqlite`.

#[path = "../../../load/src/common.rs"]
mod common;
#[path = "../../../load/src/ours.rs"]
mod ours;

#[rocket::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, port) = match args.as_slice() {
        [_, mode, port] => (mode.as_str(), port.parse().expect("a port")),
        _ => panic!("usage: server-sqlite ours-sqlite PORT"),
    };
    assert_eq!(mode, "ours-sqlite", "this server runs ours on SQLite only");
    common::count_allocations_if_asked();
    let dir = std::env::var("BENCH_SQLITE_DIR").expect("BENCH_SQLITE_DIR for the SQLite modes");
    let url = format!("sqlite://{dir}/{mode}.sqlite");
    let rocket = ours::rocket(common::figment(port), ours::Store::Sqlite(url));
    let _ = rocket.launch().await.expect("serves");
}

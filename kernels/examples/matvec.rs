//! Matrix-vector products per second for a Q4_1 matrix of SmolLM2's MLP shape, on the
//! threads `CANDLE_NUM_THREADS` gives the pool: `CANDLE_NUM_THREADS=2 cargo run --release
//! -p rapid-kernels --example matvec [rows cols]`. For checking how the kernels scale.
use rapid_kernels::{Format, Q8Rows, QuantMatrix};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (rows, cols) = (args.first().copied().unwrap_or(1536), args.get(1).copied().unwrap_or(576));
    let data: Vec<u8> =
        (0..rows * cols / 32 * Format::Q4_1.block_bytes()).map(|i| (i * 7 % 251) as u8 & 0x3f).collect();
    let matrix = QuantMatrix::new(Format::Q4_1, rows, cols, data).expect("matrix");
    let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
    let acts = Q8Rows::quantize(&x, cols).expect("acts");
    let mut out = vec![0f32; rows];
    let n = 20_000;
    let start = std::time::Instant::now();
    for _ in 0..n {
        matrix.matmul(&acts, &mut out).expect("matmul");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{rows}x{cols} on {} threads: {:.1} us per product, {:.2} GB/s of weights",
        rapid_kernels::threads::available(),
        secs / n as f64 * 1e6,
        (rows * cols / 32 * 20) as f64 * n as f64 / secs / 1e9
    );
}

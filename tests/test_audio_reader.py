"""Audio ingest: real WAVs, synthetic formats, manifest problems, shards, determinism."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from clinfuse.assets.ingest.audio import reader as audio_reader
from clinfuse.assets.ingest.audio.reader import RecordingError, decode_recording, load_recording
from clinfuse.assets.ingest.audio.recording_index import INDEX_DTYPES, ingest_audio
from clinfuse.assets.ingest.quarantine import DECODER_CRASHED
from clinfuse.assets.settings import AudioSettings
from clinfuse.models.shards import ShardReader

# The shared folder beside the checkout (../shared/realdata), as in test_realdata.py.
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "audio"
NEEDS_REALDATA = pytest.mark.skipif(
    not REALDATA.is_dir(), reason="../shared/realdata is not beside this checkout"
)
SETTINGS = AudioSettings()
SHAPE = (1, SETTINGS.n_mels, SETTINGS.frames)
ADMITTED = "2180-07-23 08:00:00"
INSIDE = "2180-07-23 14:05:00"

# SOURCES.md section 3: what each real file must end as (None = ingested).
REAL_EXPECTED = {
    "coswara/9XKj7fAmvwPUas9GFPZuTpev7T03/cough-heavy.wav": "empty recording",
    "scipy/test-44100Hz-le-1ch-4bytes-incomplete-chunk.wav": "not an audio file",
    "scipy/test-44100Hz-le-1ch-4bytes-early-eof.wav": "truncated file",
}


def _admissions() -> pd.DataFrame:
    """Patients 1 and 2, one admission each (100, 200) on 2180-07-23..26."""
    return pd.DataFrame(
        {
            "subject_id": pd.array([1, 2], dtype="Int64"),
            "hadm_id": pd.array([100, 200], dtype="Int64"),
            "admittime": pd.to_datetime([ADMITTED, ADMITTED]).astype("datetime64[ns]"),
            "dischtime": pd.to_datetime(["2180-07-26"] * 2).astype("datetime64[ns]"),
        }
    )


SUBJECTS = pd.Series([1, 2], dtype="Int64")


def _manifest(landing: Path, lines: list[str]) -> None:
    (landing / "audio").mkdir(parents=True, exist_ok=True)
    text = "path,subject_id,recorded_at,hadm_id,site\n" + "\n".join(lines) + "\n"
    (landing / "audio" / "manifest.csv").write_text(text)


def _tone(seconds: float, rate: int, amplitude: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = amplitude * np.sin(2 * np.pi * 440 * t)
    return np.repeat(wave[:, None], channels, axis=1)


def _ingest(landing: Path, shards: Path, workers: int = 1, **kw):
    return ingest_audio(landing, shards, _admissions(), SUBJECTS, SETTINGS, workers=workers, **kw)


def _reasons(result) -> dict[str, str]:
    return dict(zip(result.rejects["source"], result.rejects["reason"], strict=True))


# --- real files ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not beside this checkout")
    landing = tmp_path_factory.mktemp("real")
    shutil.copytree(REALDATA, landing / "audio")
    names = sorted(p.relative_to(REALDATA).as_posix() for p in REALDATA.rglob("*.wav"))
    _manifest(landing, [f"{name},1,{INSIDE},,ward" for name in names])
    shards = landing.parent / (landing.name + "-shards")
    return names, _ingest(landing, shards), shards


def test_every_real_file_is_ingested_or_quarantined_with_its_reason(real):
    names, result, _ = real
    assert len(names) == 18 and result.seen == 18  # SOURCES.md says 19; 18 are there
    assert result.seen == len(result.index) + len(result.rejects)
    reasons = _reasons(result)
    for name in names:
        expected = REAL_EXPECTED.get(name)
        if expected is None:
            assert f"audio/{name}" in set(result.index["path"]), name
        else:
            assert reasons[f"audio/{name}"].startswith(expected), (name, reasons)
    assert result.unlisted == []


@pytest.mark.parametrize(
    ("name", "rate", "channels", "frames"),
    [
        ("scipy/test-8000Hz-le-1ch-1byte-ulaw.wav", 8000, 1, 9),  # mu-law
        ("scipy/test-44100Hz-le-1ch-4bytes-rf64.wav", 44100, 1, 4410),  # RF64
        ("scipy/test-44100Hz-2ch-32bit-float-be.wav", 44100, 2, 441),  # RIFX float
        ("scipy/test-48000Hz-2ch-64bit-float-le-wavex.wav", 48000, 2, 480),  # WAVEX float64
        ("scipy/test-8000Hz-le-3ch-5S-24bit.wav", 8000, 3, 5),  # 24-bit, 3 channels
        ("scipy/test-8000Hz-le-2ch-1byteu.wav", 8000, 2, 800),  # 8-bit unsigned
        ("scipy/test-1234Hz-le-1ch-10S-20bit-extra.wav", 1234, 1, 10),  # odd rate
        ("coswara/iq8oYXczSjPuJoVS7DBpkGNMC2p1/breathing-deep.wav", 48000, 1, 610304),
        ("circor/2530_AV.wav", 4000, 1, 94400),
    ],
)
def test_real_formats_decode_with_their_header(real, name, rate, channels, frames):
    _, result, _ = real
    row = result.index.set_index("path").loc[f"audio/{name}"]
    assert (row["sample_rate"], row["channels"], row["frames"]) == (rate, channels, frames)
    assert row["duration_s"] == pytest.approx(frames / rate)
    assert row["hadm_id"] == 100 and row["site"] == "ward"


def test_index_columns_and_types(real):
    _, result, _ = real
    assert dict(result.index.dtypes.astype(str)) == INDEX_DTYPES
    assert result.index["sha256"].str.len().eq(64).all()
    assert list(result.rejects.columns) == ["modality", "source", "reason"]


def test_shards_read_back_as_load_recording(real):
    _, result, shards = real
    reader = ShardReader(shards)
    assert result.shards and all((shards / name).is_file() for name in result.shards)
    for row in result.index.itertuples():
        stored = np.asarray(reader.get(row.shard, row.slot), dtype=np.float32)
        expected = load_recording(REALDATA / row.path.removeprefix("audio/"), SETTINGS)
        assert stored.shape == SHAPE
        np.testing.assert_allclose(stored, expected, rtol=1e-3, atol=0.07)  # float16 rounding


@NEEDS_REALDATA
def test_real_bad_files_raise_recording_error():
    for name, reason in REAL_EXPECTED.items():
        with pytest.raises(RecordingError) as caught:
            load_recording(REALDATA / name, SETTINGS)
        assert caught.value.reason.startswith(reason)


# --- synthetic formats --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_format", "subtype", "rate", "channels"),
    [
        ("WAV", "PCM_16", 4000, 1),
        ("WAV", "PCM_24", 22050, 2),
        ("WAV", "PCM_32", 16000, 1),
        ("WAV", "FLOAT", 44100, 2),
        ("WAV", "DOUBLE", 8000, 1),
        ("WAV", "PCM_U8", 11025, 1),
        ("WAV", "ULAW", 8000, 1),
        ("FLAC", "PCM_16", 48000, 2),
        ("FLAC", "PCM_24", 96000, 1),
    ],
)
def test_synthetic_formats_give_the_fixed_shape(tmp_path, file_format, subtype, rate, channels):
    path = tmp_path / f"x.{file_format.lower()}"
    sf.write(path, _tone(2.5, rate, channels=channels), rate, subtype=subtype, format=file_format)
    decoded = decode_recording(path, SETTINGS)
    assert decoded.features.shape == SHAPE and decoded.features.dtype == np.float32
    assert np.isfinite(decoded.features).all()
    assert (decoded.sample_rate, decoded.channels) == (rate, channels)
    # 2.5 s of tone then padding: the tone frames are well above the silence floor.
    assert decoded.features[0, :, :50].max() > -20 and decoded.features[0, :, -20:].max() < -99.9


def test_clips_shorter_than_n_fft_and_single_samples_work(tmp_path):
    for frames in (1, 5, SETTINGS.n_fft // 2):
        path = tmp_path / f"short{frames}.wav"
        sf.write(path, np.full(frames, 0.5), 4000, subtype="PCM_16")
        assert load_recording(path, SETTINGS).shape == SHAPE


def test_long_recordings_are_cut_from_the_start(tmp_path):
    """60 s at 8 kHz: only the first 8 s count, so a change after them changes nothing."""
    rate = 8000
    wave = _tone(60, rate)[:, 0]
    altered = wave.copy()
    altered[int(9 * rate) :] = 0.0
    sf.write(tmp_path / "a.wav", wave, rate, subtype="FLOAT")
    sf.write(tmp_path / "b.wav", altered, rate, subtype="FLOAT")
    decoded = decode_recording(tmp_path / "a.wav", SETTINGS)
    assert decoded.frames == 60 * rate
    np.testing.assert_array_equal(decoded.features, load_recording(tmp_path / "b.wav", SETTINGS))


@pytest.mark.parametrize("rate", [44100, 1234])
def test_reading_only_the_prefix_matches_resampling_everything(rate):
    from clinfuse.assets.ingest.audio import features as af

    wave = 0.1 * np.random.default_rng(0).standard_normal((rate * 12, 1)).astype(np.float32)
    prefix = af.waveform_features(wave[: af.frames_to_read(rate, SETTINGS)], rate, SETTINGS)
    everything = af.resample(wave[:, 0], rate, SETTINGS.sample_rate)
    full = af.log_mel(af.fit_length(everything, af.target_samples(SETTINGS)), SETTINGS)
    np.testing.assert_allclose(prefix, full, atol=0.05)  # dB


@pytest.mark.parametrize(
    "settings", [SETTINGS, AudioSettings(sample_rate=8000, seconds=3, n_mels=40, n_fft=512)]
)
def test_log_mel_is_librosa_melspectrogram_bit_for_bit(settings):
    """log_mel reuses one mel filter bank; the dB values must be librosa's own, to the bit."""
    from librosa import power_to_db
    from librosa.feature import melspectrogram

    from clinfuse.assets.ingest.audio import features as af

    rng = np.random.default_rng(5)
    for _ in range(3):  # the cached filter bank must not drift between calls
        signal = (0.2 * rng.standard_normal(af.target_samples(settings))).astype(np.float32)
        power = melspectrogram(
            y=signal,
            sr=settings.sample_rate,
            n_fft=settings.n_fft,
            hop_length=settings.hop_length,
            n_mels=settings.n_mels,
            fmax=settings.sample_rate / 2,
            center=True,
            pad_mode="constant",
            power=2.0,
        )
        db = power_to_db(power, ref=af.REFERENCE_POWER, amin=af.MIN_POWER, top_db=None)
        np.testing.assert_array_equal(af.log_mel(signal, settings), db.astype(np.float32)[None])


def test_bytes_and_path_give_the_same_features(tmp_path):
    path = tmp_path / "x.flac"
    sf.write(path, _tone(3, 16000, channels=2), 16000, format="FLAC")
    np.testing.assert_array_equal(
        load_recording(path, SETTINGS), load_recording(path.read_bytes(), SETTINGS)
    )


def test_not_audio_and_truncated_files(tmp_path):
    with pytest.raises(RecordingError, match="^not an audio file"):
        load_recording(b"subject_id,hadm_id\n1,2\n", SETTINGS)
    wav = tmp_path / "x.wav"
    sf.write(wav, _tone(2, 4000), 4000, subtype="PCM_16")
    with pytest.raises(RecordingError, match="^truncated file"):
        load_recording(wav.read_bytes()[:-1000], SETTINGS)
    flac = tmp_path / "x.flac"
    sf.write(flac, np.random.default_rng(0).uniform(-0.5, 0.5, (8000, 2)), 4000, format="FLAC")
    data = flac.read_bytes()
    with pytest.raises(RecordingError, match="^truncated file"):
        load_recording(data[: len(data) // 2], SETTINGS)


def test_unfinished_streaming_header_is_not_truncation(tmp_path):
    """A recorder that never patched its sizes (0xFFFFFFFF) still holds a good recording."""
    path = tmp_path / "x.wav"
    sf.write(path, _tone(1, 4000), 4000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data")
    data[at + 4 : at + 8] = b"\xff\xff\xff\xff"
    assert load_recording(bytes(data), SETTINGS).shape == SHAPE


def test_loudness_is_kept_by_the_fixed_reference(tmp_path):
    sf.write(tmp_path / "loud.wav", _tone(4, 4000, 0.5), 4000, subtype="FLOAT")
    sf.write(tmp_path / "quiet.wav", _tone(4, 4000, 0.05), 4000, subtype="FLOAT")
    loud = load_recording(tmp_path / "loud.wav", SETTINGS)
    quiet = load_recording(tmp_path / "quiet.wav", SETTINGS)
    band = loud[0, :, 5:100] > -60  # where the tone is
    assert np.mean(loud[0, :, 5:100][band] - quiet[0, :, 5:100][band]) == pytest.approx(20, abs=1)


def test_resampling_is_librosa_soxr_hq_and_deterministic():
    import librosa

    from clinfuse.assets.ingest.audio.features import resample

    x = np.random.default_rng(1).standard_normal(44100).astype(np.float32)
    ours = resample(x, 44100, 4000)
    expected = librosa.resample(x, orig_sr=44100, target_sr=4000, res_type="soxr_hq")
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(ours, resample(x, 44100, 4000))


# --- the manifest -------------------------------------------------------------------------------


@pytest.fixture
def messy(tmp_path):
    """A landing zone with one row per problem (row numbers are 1-based data rows)."""
    landing = tmp_path / "landing"
    audio = landing / "audio"
    (audio / "ward").mkdir(parents=True)
    sf.write(audio / "ward/a.wav", _tone(3, 4000, 0.5), 4000, subtype="PCM_16")
    sf.write(audio / "ward/b.flac", _tone(9, 44100, 0.2, 2), 44100, format="FLAC")
    sf.write(audio / "c.wav", _tone(1, 16000, 0.1), 16000, subtype="PCM_24")
    shutil.copy(audio / "ward/a.wav", audio / "copy-of-a.wav")
    (audio / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    sf.write(audio / "forgotten.wav", _tone(1, 4000), 4000)  # in no manifest row
    rows = [
        f"ward/a.wav,1,{INSIDE},,bedside",  # 1 ingested, linked by time -> 100
        f"ward/b.flac,2,{INSIDE},200,",  # 2 ingested, hadm given
        f"nowhere.wav,1,{INSIDE},,",  # 3 missing file
        "c.wav,1,not a time,,",  # 4 bad recorded_at
        f"c.wav,abc,{INSIDE},,",  # 5 bad subject_id
        f"c.wav,9,{INSIDE},,",  # 6 unknown patient
        "c.wav,1,2181-01-01 00:00:00,,",  # 7 no admission
        f"c.wav,1,{INSIDE},200,",  # 8 unknown admission (200 is patient 2's)
        f"ward/a.wav,1,{INSIDE},,",  # 9 duplicate: same path again
        f"copy-of-a.wav,1,{INSIDE},,",  # 10 duplicate: same content, other name
        f"broken.wav,1,{INSIDE},,",  # 11 not an audio file
        "",  # 12 blank line: a row without a path
        "c.wav,1,,,",  # 13 missing recorded_at
        f"../ehr/patients.csv,1,{INSIDE},,",  # 14 a path outside audio/
        f"./c.wav,2,{INSIDE},,",  # 15 ingested (normalised path)
    ]
    _manifest(landing, rows)
    return landing


MESSY_REJECTS = {
    "audio/manifest.csv:3": "missing file",
    "audio/manifest.csv:4": "bad recorded_at",
    "audio/manifest.csv:5": "bad subject_id",
    "audio/manifest.csv:6": "unknown patient",
    "audio/manifest.csv:7": "no admission",
    "audio/manifest.csv:8": "unknown admission",
    "audio/manifest.csv:9": "duplicate recording",
    "audio/manifest.csv:10": "duplicate recording",
    "audio/broken.wav": "not an audio file",
    "audio/manifest.csv:12": "missing path",
    "audio/manifest.csv:13": "missing recorded_at",
    "audio/manifest.csv:14": "outside landing zone",  # resolves outside audio/ (landing-zone.md)
}


def test_manifest_problems_are_quarantined_at_their_row(messy, tmp_path):
    calls: list[tuple[int, int]] = []
    result = _ingest(messy, tmp_path / "shards", progress=lambda d, t: calls.append((d, t)))
    assert result.seen == 15 == len(result.index) + len(result.rejects)
    reasons = _reasons(result)
    assert set(reasons) == set(MESSY_REJECTS)
    for source, reason in MESSY_REJECTS.items():
        assert reasons[source].startswith(reason), (source, reasons[source])
    index = result.index.set_index("manifest_row")
    assert list(index.index) == [1, 2, 15]
    assert list(index["hadm_id"]) == [100, 200, 200]
    assert list(index["path"]) == ["audio/ward/a.wav", "audio/ward/b.flac", "audio/c.wav"]
    assert index.loc[1, "site"] == "bedside" and pd.isna(index.loc[2, "site"])
    assert index.loc[1, "recorded_at"] == pd.Timestamp(INSIDE)
    assert (index.loc[2, "sample_rate"], index.loc[2, "channels"]) == (44100, 2)
    assert result.unlisted == ["audio/forgotten.wav"]
    # One slot each; progress counts the files decoded (every file under audio/, named or not).
    assert len(set(zip(result.index["shard"], result.index["slot"], strict=True))) == 3
    files = [p for p in (messy / "audio").rglob("*") if p.is_file() and p.name != "manifest.csv"]
    assert calls[-1][0] == calls[-1][1] == len(files)


def test_a_badly_linked_row_does_not_claim_the_content(tmp_path):
    landing = tmp_path / "landing"
    (landing / "audio").mkdir(parents=True)
    sf.write(landing / "audio/a.wav", _tone(1, 4000), 4000)
    _manifest(landing, [f"a.wav,9,{INSIDE},,", f"a.wav,1,{INSIDE},,"])
    result = _ingest(landing, tmp_path / "shards")
    assert list(result.index["manifest_row"]) == [2]
    assert _reasons(result) == {"audio/manifest.csv:1": "unknown patient"}


def test_audio_folder_without_manifest(tmp_path):
    landing = tmp_path / "landing"
    (landing / "audio/x").mkdir(parents=True)
    sf.write(landing / "audio/x/a.wav", _tone(1, 4000), 4000)
    result = _ingest(landing, tmp_path / "shards")
    assert (result.seen, len(result.index), len(result.rejects)) == (0, 0, 0)
    assert result.unlisted == ["audio/x/a.wav"] and result.shards == []
    assert dict(result.index.dtypes.astype(str)) == INDEX_DTYPES


def test_pool_and_single_process_give_identical_output(messy, tmp_path, monkeypatch):
    """Determinism: the worker count changes neither the index nor a byte of the shards."""
    monkeypatch.setattr(audio_reader, "BATCH", 1)  # 4 files to decode: 2 workers, several tasks
    one = _ingest(messy, tmp_path / "one", workers=1)
    two = _ingest(messy, tmp_path / "two", workers=2)
    pd.testing.assert_frame_equal(one.index, two.index)
    pd.testing.assert_frame_equal(one.rejects, two.rejects)
    assert one.shards == two.shards
    for name in one.shards:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


# --- a decoder that crashes ---------------------------------------------------------------------


def crash_on_marked(paths: list[str], settings: AudioSettings) -> list:
    """A stand-in for libsndfile segfaulting on one file: the worker process dies."""
    if any("crash" in Path(p).name for p in paths):
        os.kill(os.getpid(), signal.SIGSEGV)
    return audio_reader.examine_files(paths, settings)


def test_a_crashing_worker_costs_one_file(tmp_path, monkeypatch):
    """The pool goes on; the file whose decoding killed its worker is quarantined "decoder
    crashed" under its own path, and a copy of it under another row is a duplicate."""
    landing = tmp_path / "landing"
    (landing / "audio").mkdir(parents=True)
    names = [f"{i:02d}.wav" for i in range(5)] + ["crash.wav"] + [f"{i:02d}.wav" for i in (6, 7)]
    for number, name in enumerate(names):
        sf.write(landing / "audio" / name, _tone(1 + number / 8, 4000), 4000, subtype="PCM_16")
    shutil.copy(landing / "audio" / "crash.wav", landing / "audio" / "crash-copy.wav")
    _manifest(landing, [f"{name},1,{INSIDE},," for name in [*names, "crash-copy.wav"]])
    monkeypatch.setattr(audio_reader, "BATCH", 2)  # several batches in flight when it dies
    crashing = functools.partial(audio_reader.decode_files, examine=crash_on_marked)
    monkeypatch.setattr(audio_reader, "decode_files", crashing)

    result = _ingest(landing, tmp_path / "shards", workers=2)

    assert result.seen == len(result.index) + len(result.rejects) == len(names) + 1
    assert _reasons(result) == {
        "audio/crash.wav": DECODER_CRASHED,
        "audio/manifest.csv:9": "duplicate recording",  # crash-copy.wav: same bytes
    }
    expected = [f"audio/{name}" for name in names if name != "crash.wav"]
    assert list(result.index["path"]) == expected
    reader = ShardReader(tmp_path / "shards")
    for row in result.index.itertuples():
        ours = reader.get(row.shard, row.slot)
        assert np.array_equal(ours, load_recording(landing / row.path, SETTINGS).astype("float16"))


# --- a long recording costs what a short one does -----------------------------------------------


def _bytes_read() -> int:
    """Bytes this process has read through system calls so far (libsndfile's reads included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def _write_tone(path: Path, seconds: int, file_format: str) -> None:
    """A minute of tone written over and over: a 2-hour file in about a second."""
    minute = _tone(60, 4000, 0.3)[:, 0].astype(np.float32)
    with sf.SoundFile(path, "w", 4000, 1, subtype="PCM_16", format=file_format) as sink:
        for start in range(0, seconds, 60):
            sink.write(minute[: (min(60, seconds - start)) * 4000])


def _decode_cost(path: Path) -> tuple[int, int]:
    """(bytes read, peak Python memory) of decoding `path` once."""
    before = _bytes_read()
    tracemalloc.start()
    try:
        decode_recording(path, SETTINGS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return _bytes_read() - before, peak


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
@pytest.mark.parametrize("file_format", ["WAV", "FLAC"])
def test_a_two_hour_recording_decodes_like_an_eight_second_one(tmp_path, file_format):
    """Only the seconds the features use are read and decoded: 2 h at 4 kHz (a 57.6 MB WAV)
    reads and allocates about what 8 s (64 kB) does."""
    short, long = tmp_path / f"short.{file_format}", tmp_path / f"long.{file_format}"
    _write_tone(short, 8, file_format)
    _write_tone(long, 2 * 3600, file_format)
    decode_recording(short, SETTINGS)  # warm: imports, the mel filter bank
    short_read, short_peak = _decode_cost(short)
    long_read, long_peak = _decode_cost(long)
    assert long.stat().st_size > 200 * short.stat().st_size
    # A few extra header/seek buffers of slack; the whole file would be hundreds of times more.
    assert long_read < 2 * short_read + 256 * 1024, (short_read, long_read)
    assert long_peak < 1.5 * short_peak, (short_peak, long_peak)
    assert decode_recording(long, SETTINGS).frames == 2 * 3600 * 4000

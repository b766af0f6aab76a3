//! Upload, download and the file operations a backup destination needs.

use crate::server::SftpServer;
use crate::util::{random_bytes, sha256, Recorder};
use sftp::{FileKind, RemoteErrorKind};
use testkit::sshd::Server;

#[test]
fn upload_download_round_trip_multi_mib() {
    let Some(server) = Server::start() else {
        return;
    };
    let session = server.connect();
    // Not a multiple of the request size, so the last request is short.
    let data = random_bytes(6 * 1024 * 1024 + 12_345);
    let path = server.path("disk.vmdk");
    let mut up = Recorder::default();
    let n = session.upload(&data[..], &path, &mut up).expect("upload");
    assert_eq!(n, data.len() as u64);
    assert_eq!((up.advanced, up.finished), (n, true));
    assert!(up.calls > 1, "progress reported per confirmed request");
    // The server wrote exactly these bytes (it is local).
    let on_disk = std::fs::read(&path).expect("read uploaded file");
    assert_eq!(sha256(&on_disk), sha256(&data));
    assert_eq!(session.stat(&path).expect("stat").size_bytes, n);

    let mut back = Vec::new();
    let mut down = Recorder::default();
    let m = session
        .download(&path, &mut back, &mut down)
        .expect("download");
    assert_eq!(m, n);
    assert_eq!(sha256(&back), sha256(&data));
    assert_eq!(
        (down.started, down.advanced, down.finished),
        (Some(Some(n)), n, true)
    );
}

#[test]
fn empty_and_small_files_over_the_seed_url_form() {
    let Some(server) = Server::start() else {
        return;
    };
    let seed = format!(
        "scp://{}@127.0.0.1:{}:{}",
        server.user,
        server.port,
        server.root()
    );
    let url = sftp::RemoteUrl::parse(&seed).expect("seed url");
    let session = sftp::connect(&url, &server.options()).expect("connect with the seed form");
    for (name, data) in [("empty", Vec::new()), ("small", b"catalog v1\n".to_vec())] {
        let path = server.path(name);
        assert_eq!(
            session.upload(&data[..], &path, &mut ()).expect("upload"),
            data.len() as u64
        );
        let mut back = Vec::new();
        assert_eq!(
            session
                .download(&path, &mut back, &mut ())
                .expect("download"),
            data.len() as u64
        );
        assert_eq!(back, data);
    }
}

#[test]
fn folder_operations_for_a_backup() {
    let Some(server) = Server::start() else {
        return;
    };
    let session = server.connect();
    let ext = session.extensions();
    assert!(
        ext.posix_rename && ext.fsync && ext.statvfs,
        "OpenSSH offers these: {ext:?}"
    );
    let vm = server.path("vm37");
    assert!(!session.exists(&vm).expect("exists"));
    session.mkdir(&vm).expect("mkdir");
    assert_eq!(session.stat(&vm).expect("stat").kind, FileKind::Dir);
    let again = session.mkdir(&vm).expect_err("mkdir twice");
    assert!(
        matches!(
            again,
            sftp::Error::Remote {
                kind: RemoteErrorKind::AlreadyExists,
                ..
            }
        ),
        "{again}"
    );

    session.mkdir(&format!("{vm}/sub")).expect("mkdir sub");
    session
        .upload(&b"x"[..], &format!("{vm}/sub/a"), &mut ())
        .expect("upload a");
    session
        .upload(&b"old"[..], &format!("{vm}/catalog"), &mut ())
        .expect("upload catalog");
    session
        .upload(
            &b"new catalog"[..],
            &format!("{vm}/catalog.partial"),
            &mut (),
        )
        .expect("upload partial");
    std::os::unix::fs::symlink("/etc", format!("{vm}/link")).expect("symlink");

    // posix-rename replaces the existing target atomically.
    session
        .rename(&format!("{vm}/catalog.partial"), &format!("{vm}/catalog"))
        .expect("rename over");
    assert_eq!(
        std::fs::read(format!("{vm}/catalog")).expect("read"),
        b"new catalog"
    );

    let mut names: Vec<(String, FileKind)> = session
        .list_dir(&vm)
        .expect("list")
        .into_iter()
        .map(|e| (e.name, e.stat.kind))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        names,
        vec![
            ("catalog".into(), FileKind::File),
            ("link".into(), FileKind::Symlink),
            ("sub".into(), FileKind::Dir)
        ]
    );

    let space = session.statvfs(&vm).expect("statvfs").expect("offered");
    assert!(
        space.total_bytes >= space.free_bytes
            && space.free_bytes >= space.available_bytes
            && space.total_bytes > 0
    );

    // remove_dir_all removes the link, not /etc.
    session.remove_dir_all(&vm).expect("remove_dir_all");
    assert!(!session.exists(&vm).expect("exists"));
    assert!(
        std::path::Path::new("/etc/hostname").exists()
            || std::path::Path::new("/etc/passwd").exists()
    );

    session
        .upload(&b"x"[..], &server.path("f"), &mut ())
        .expect("upload f");
    session.remove_file(&server.path("f")).expect("remove_file");
    let gone = session.stat(&server.path("f")).expect_err("stat removed");
    assert!(gone.is_not_found(), "{gone}");
    session.close().expect("close");
}

#[test]
fn remote_file_writes_by_position_and_in_order() {
    let Some(server) = Server::start() else {
        return;
    };
    let session = server.connect();
    // Positional: the tail first, then the head, with a hole in between that reads zero.
    let data = random_bytes(3 * 1024 * 1024 + 777);
    let path = server.path("positional");
    let mut f = session.create_file(&path).expect("create");
    let half = data.len() / 2;
    f.write_at(half as u64 + 4096, &data[half + 4096..])
        .expect("write tail");
    f.write_at(0, &data[..half]).expect("write head");
    assert_eq!(f.finish().expect("finish"), data.len() as u64);
    let mut want = data.clone();
    want[half..half + 4096].fill(0);
    assert_eq!(sha256(&std::fs::read(&path).expect("read")), sha256(&want));

    // In order through std::io::Write, in odd-sized pieces.
    let path = server.path("sequential");
    let mut f = session.create_file(&path).expect("create");
    for piece in data.chunks(100_003) {
        std::io::Write::write_all(&mut f, piece).expect("write");
    }
    assert_eq!(f.finish().expect("finish"), data.len() as u64);
    assert_eq!(sha256(&std::fs::read(&path).expect("read")), sha256(&data));

    // A folder that does not exist is reported when the file is created.
    let err = session
        .create_file(&server.path("no/such/file"))
        .expect_err("missing parent");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

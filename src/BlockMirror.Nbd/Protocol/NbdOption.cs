namespace BlockMirror.Nbd.Protocol;

/// <summary>Option requests of the newstyle handshake (NBD_OPT_*).</summary>
public enum NbdOption : uint
{
    ExportName = 1,
    Abort = 2,
    List = 3,
    StartTls = 5,
    Info = 6,
    Go = 7,
    StructuredReply = 8,
    ListMetaContext = 9,
    SetMetaContext = 10,
    ExtendedHeaders = 11,
}

/// <summary>Option reply types (NBD_REP_*); errors have bit 31 set.</summary>
public enum NbdOptionReply : uint
{
    Ack = 1,
    Server = 2,
    Info = 3,
    MetaContext = 4,
    ErrUnsupported = 0x80000000 | 1,
    ErrPolicy = 0x80000000 | 2,
    ErrInvalid = 0x80000000 | 3,
    ErrPlatform = 0x80000000 | 4,
    ErrTlsRequired = 0x80000000 | 5,
    ErrUnknown = 0x80000000 | 6,
    ErrShutdown = 0x80000000 | 7,
    ErrBlockSizeRequired = 0x80000000 | 8,
    ErrTooBig = 0x80000000 | 9,
}

/// <summary>Information items of NBD_OPT_INFO and NBD_OPT_GO (NBD_INFO_*).</summary>
public enum NbdInfo : ushort
{
    Export = 0,
    Name = 1,
    Description = 2,
    BlockSize = 3,
}

/// <summary>Handshake flags the server sends (NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES).</summary>
[Flags]
public enum NbdHandshakeFlags : ushort
{
    None = 0,
    FixedNewstyle = 1 << 0,
    NoZeroes = 1 << 1,
}

/// <summary>Flags the client answers the handshake with (NBD_FLAG_C_*).</summary>
[Flags]
public enum NbdClientFlags : uint
{
    None = 0,
    FixedNewstyle = 1 << 0,
    NoZeroes = 1 << 1,
}

/// <summary>Per-export transmission flags (NBD_FLAG_*).</summary>
[Flags]
public enum NbdTransmissionFlags : ushort
{
    None = 0,
    HasFlags = 1 << 0,
    ReadOnly = 1 << 1,
    SendFlush = 1 << 2,
    SendFua = 1 << 3,
    Rotational = 1 << 4,
    SendTrim = 1 << 5,
    SendWriteZeroes = 1 << 6,
    SendDf = 1 << 7,
    CanMultiConn = 1 << 8,
    SendResize = 1 << 9,
    SendCache = 1 << 10,
    SendFastZero = 1 << 11,
}

namespace BlockMirror.Nbd.Protocol;

/// <summary>The protocol's magic numbers (NetworkBlockDevice/nbd doc/proto.md), all sent big-endian.</summary>
public static class NbdMagic
{
    /// <summary>"NBDMAGIC": the first eight bytes the server sends.</summary>
    public const ulong Init = 0x4e42444d41474943;

    /// <summary>"IHAVEOPT": follows <see cref="Init"/> in the newstyle handshake and starts every option request.</summary>
    public const ulong Option = 0x49484156454F5054;

    /// <summary>Starts every option reply.</summary>
    public const ulong OptionReply = 0x3e889045565a9;

    /// <summary>Starts every transmission request.</summary>
    public const uint Request = 0x25609513;

    /// <summary>Starts a simple reply.</summary>
    public const uint SimpleReply = 0x67446698;

    /// <summary>Starts a structured reply chunk.</summary>
    public const uint StructuredReply = 0x668e33ef;
}

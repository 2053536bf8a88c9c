package org.edgecpm.demo.core;

import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CoderResult;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.List;

/**
 * Assembles streamed pieces into display text that never shows half a character or a stop token.
 *
 * <p>Pieces may arrive as bytes (a token can end inside a multi-byte UTF-8 sequence) or as Java strings (which
 * can end on a lone high surrogate). Incomplete sequences are held back until the next piece completes them.
 * Text that could be the beginning of a stop string is held back too; when a stop string appears, the stream
 * ends there.
 */
public final class TextStream {
    private final List<String> stops;
    private final CharsetDecoder decoder = StandardCharsets.UTF_8.newDecoder()
            .onMalformedInput(CodingErrorAction.REPLACE).onUnmappableCharacter(CodingErrorAction.REPLACE);
    private ByteBuffer pendingBytes = ByteBuffer.allocate(0);
    private final StringBuilder held = new StringBuilder();
    private final StringBuilder text = new StringBuilder();
    private boolean stopped;

    public TextStream(List<String> stopTexts) {
        this.stops = stopTexts;
    }

    /** Feed raw bytes of a token; returns the text that may be shown now. */
    public String pushBytes(byte[] piece) {
        ByteBuffer in = ByteBuffer.allocate(pendingBytes.remaining() + piece.length);
        in.put(pendingBytes).put(piece).flip();
        CharBuffer out = CharBuffer.allocate(in.remaining() + 1);
        CoderResult r = decoder.decode(in, out, false);
        if (r.isError()) {
            throw new IllegalStateException(r.toString());
        }
        pendingBytes = ByteBuffer.allocate(in.remaining());
        pendingBytes.put(in).flip();
        out.flip();
        return push(out.toString());
    }

    /** Feed a decoded piece; returns the text that may be shown now. */
    public String push(String piece) {
        if (stopped) {
            return "";
        }
        held.append(piece);
        for (String s : stops) {
            int at = held.indexOf(s);
            if (at >= 0) {
                held.setLength(at);
                stopped = true;
                return emit(held.length());
            }
        }
        int keep = 0;
        for (String s : stops) {
            for (int k = Math.min(s.length() - 1, held.length()); k > keep; k--) {
                if (held.substring(held.length() - k).equals(s.substring(0, k))) {
                    keep = k;
                    break;
                }
            }
        }
        int n = held.length() - keep;
        if (n > 0 && Character.isHighSurrogate(held.charAt(n - 1))) {
            n--;
        }
        return emit(n);
    }

    /** End of generation: whatever is held back is shown (undecodable bytes as U+FFFD). */
    public String finish() {
        if (pendingBytes.remaining() > 0 && !stopped) {
            held.append('\uFFFD');
            pendingBytes = ByteBuffer.allocate(0);
        }
        return stopped ? "" : emit(held.length());
    }

    public boolean stopped() {
        return stopped;
    }

    /** Everything shown so far. */
    public String text() {
        return text.toString();
    }

    private String emit(int n) {
        String out = held.substring(0, n);
        held.delete(0, n);
        text.append(out);
        return out;
    }
}

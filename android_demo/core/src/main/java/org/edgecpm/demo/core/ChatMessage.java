package org.edgecpm.demo.core;

/** One chat turn: role is "system", "user" or "assistant". */
public final class ChatMessage {
    public final String role;
    public final String content;

    public ChatMessage(String role, String content) {
        this.role = role;
        this.content = content;
    }
}

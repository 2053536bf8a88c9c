package org.edgecpm.demo.core;

/** Where streamed display text goes (the chat view on the phone). */
public interface TextSink {
    void append(String text);
}

package org.edgecpm.demo.core;

/** A bundle the app cannot use, with a one-line reason for the user. */
public final class BundleException extends Exception {
    public BundleException(String message) {
        super(message);
    }
}
